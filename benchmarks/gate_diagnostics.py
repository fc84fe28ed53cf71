"""
What a trained video method's residual gates (``MODEL.VIDEO.IDENTITY_INIT``) let through: its
test-set mAP, per condition, with every gate's ``gamma`` set to each of ``--gammas`` (0: the
single-frame detector its fine-tuned weights make, closed; 1: the paper's module output on the
same weights, fully open) and, with ``--trained``, as trained. The gap between closed and open
is what the temporal modules learned; how far the trained gates sit from both is how much of it
is used.

    python benchmarks/gate_diagnostics.py --config-file configs/synthetic/stsn_rfcn.yaml \\
        MODEL.WEIGHTS output/accuracy/runs/stsn_rfcn-.../seed0/model_final.pth
"""

import argparse
import json

import torch
from stsn_diagnostics import load_trained

from vod_d2.engine import VideoTrainer
from vod_d2.modeling.temporal.gate import ResidualGate


def _gates(model):
    return [m for m in model.modules() if isinstance(m, ResidualGate)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--gammas", nargs="+", type=float, default=[0.0, 1.0], help="every gate's gamma set to each"
    )
    parser.add_argument("--trained", action="store_true", help="also evaluate the gates as trained")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("opts", nargs="...", help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    if not any(key == "MODEL.WEIGHTS" for key in args.opts[::2]):
        parser.error("give the trained weights: MODEL.WEIGHTS path/to/model_final.pth")
    cfg, model = load_trained(args)
    gates = _gates(model)
    if not gates:
        parser.error(f"{args.config_file} has no residual gate (MODEL.VIDEO.IDENTITY_INIT False?)")
    trained = [g.gamma.detach().clone() for g in gates]
    print("gates (mean / largest |gamma| over channels): " + ", ".join(
        f"{g.gamma.mean():.3f} / {g.gamma.abs().max():.3f}" for g in gates
    ))  # fmt: skip

    results = {}
    for value in ([None] if args.trained else []) + args.gammas:
        with torch.no_grad():
            for gate, gamma in zip(gates, trained):
                gate.gamma.copy_(gamma if value is None else torch.full_like(gamma, value))
        metrics = VideoTrainer.test(cfg, model)[cfg.DATASETS.TEST[0]]["bbox"]
        setting = "trained" if value is None else f"gamma={value:g}"
        results[setting] = {k: v for k, v in metrics.items() if k.startswith("mAP")}
    keys = list(next(iter(results.values())))
    print(f"{'gates':<12}" + "".join(f"{k:>16}" for k in keys))
    for setting, metrics in results.items():
        print(f"{setting:<12}" + "".join(f"{metrics[k]:>16.1f}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
