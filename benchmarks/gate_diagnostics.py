"""
What a trained video method's residual gates (``MODEL.VIDEO.IDENTITY_INIT``, any
``MODEL.VIDEO.GATE.KIND``) let through: its test-set mAP, per condition, with every gate fixed
at each opening of ``--gammas`` (0: the single-frame detector its fine-tuned weights make,
closed; 1: the paper's module output on the same weights, fully open; a position gate at that
value everywhere) and, with ``--trained``, as trained. The gap between closed and open
is what the temporal modules learned; how far the trained gates sit from both is how much of it
is used.

    python benchmarks/gate_diagnostics.py --config-file configs/synthetic/stsn_rfcn.yaml \\
        MODEL.WEIGHTS output/accuracy/runs/stsn_rfcn-.../seed0/model_final.pth
"""

import argparse
import json

import numpy as np
from stsn_diagnostics import load_trained

from vod_d2.engine import VideoTrainer
from vod_d2.modeling.temporal.gate import Gate, PositionGate, gate_opening


def _record_position_gates(model):
    """Forward hooks that collect the mean ``g`` of every position gate over what it gates
    (its opening on the test set); returns {module name: list of means}."""
    means = {}
    for name, module in model.named_modules():
        if isinstance(module, PositionGate):
            values = means.setdefault(name, [])
            module.register_forward_hook(
                lambda m, inputs, out, values=values: values.append(float(m.gate(*inputs).mean()))
            )
    return means


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--gammas", nargs="+", type=float, default=[0.0, 1.0], help="every gate fixed at each"
    )
    parser.add_argument("--trained", action="store_true", help="also evaluate the gates as trained")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("opts", nargs="...", help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    if not any(key == "MODEL.WEIGHTS" for key in args.opts[::2]):
        parser.error("give the trained weights: MODEL.WEIGHTS path/to/model_final.pth")
    cfg, model = load_trained(args)
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    if not gates:
        parser.error(f"{args.config_file} has no residual gate (MODEL.VIDEO.IDENTITY_INIT False?)")
    trained = [{k: v.clone() for k, v in g.state_dict().items()} for g in gates]
    openings = gate_opening(model)
    position_means = _record_position_gates(model)

    results = {}
    for value in ([None] if args.trained else []) + args.gammas:
        for gate, state in zip(gates, trained):
            gate.load_state_dict(state)
            if value is not None:
                gate.fix_opening(value)
        metrics = VideoTrainer.test(cfg, model)[cfg.DATASETS.TEST[0]]["bbox"]
        if value is None:  # a position gate's opening is its mean g on the test set
            openings.update({k: float(np.mean(v)) for k, v in position_means.items() if v})
        for values in position_means.values():
            values.clear()
        setting = "trained" if value is None else f"gamma={value:g}"
        results[setting] = {k: v for k, v in metrics.items() if k.startswith("mAP")}
    print("gates' opening as trained: " + ", ".join(f"{k} {v:.3f}" for k, v in openings.items()))
    keys = list(next(iter(results.values())))
    print(f"{'gates':<12}" + "".join(f"{k:>16}" for k in keys))
    for setting, metrics in results.items():
        print(f"{setting:<12}" + "".join(f"{metrics[k]:>16.1f}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
