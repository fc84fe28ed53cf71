"""
What a trained STSN does with its support frames, on a test set: the aggregation weights the
reference and its support frames get (Eq. 3), the offsets of the sampling layer, how far the
sampling conv moved from its identity initialisation, and the mAP with the test window against
the reference alone (the same weights, TEST_WINDOW (0, 0)).

    python benchmarks/stsn_diagnostics.py --config-file configs/synthetic/stsn.yaml \\
        MODEL.WEIGHTS output/accuracy/.../stsn/seed0/model_final.pth
"""

import argparse
import json
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vod_d2.checkpoint import resolve_weights
from vod_d2.engine import VideoTrainer, load_config

_KERNEL_CENTRE = 1


def load_trained(args, window=None):
    """The config (``args.config_file`` and ``args.opts``, on CPU) and its trained model in eval
    mode, the test window set to ``window`` if given."""
    try:
        cfg = load_config(args.config_file, args.opts, register_datasets=True)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: error: {e}") from None
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.VID_EVAL.DUMP_DETECTIONS = False
    if window is not None:
        cfg.MODEL.VIDEO.TEST_WINDOW = window
    try:
        weights = resolve_weights(cfg.MODEL.WEIGHTS)
    except FileNotFoundError as e:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: error: {e}") from None
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    return cfg, model


def _identity_distance(conv) -> float:
    """||W - I|| / ||I|| of the sampling conv (I: the centre tap's identity matrix)."""
    weight = conv.weight.detach()
    identity = torch.zeros_like(weight)
    identity[:, :, _KERNEL_CENTRE, _KERNEL_CENTRE] = torch.eye(weight.shape[0], weight.shape[1])
    return float((weight - identity).norm() / identity.norm())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("opts", nargs="...", help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    cfg, model = load_trained(args)
    module = model.temporal_aggregation
    weights, offsets = [], []
    aggregate, sample = module.aggregate, module.sampling.forward

    def recording_aggregate(ref, support, return_weights=False):
        out, w = aggregate(ref, support, return_weights=True)
        weights.append(w)  # (B, 1 + S, H, W), the reference first
        return (out, w) if return_weights else out

    def recording_sample(ref, support, return_offsets=False):
        out, o = sample(ref, support, return_offsets=True)
        offsets.append(o.abs().mean().item())
        return (out, o) if return_offsets else out

    module.aggregate, module.sampling.forward = recording_aggregate, recording_sample
    window = VideoTrainer.test(cfg, model)[cfg.DATASETS.TEST[0]]["bbox"]
    weights = torch.cat([w.flatten(2) for w in weights])  # (frames, 1 + S, H * W)
    reference = weights[:, 0]
    _, alone_model = load_trained(args, window=(0, 0))
    alone = VideoTrainer.test(cfg, alone_model)[cfg.DATASETS.TEST[0]]["bbox"]
    result = {
        "frames": weights.shape[0],
        "window_frames": weights.shape[1],
        "uniform_weight": 1.0 / weights.shape[1],
        "reference_weight_mean": float(reference.mean()),
        "support_weight_mean": float(weights[:, 1:].mean()),
        "positions_reference_above_0.9": float((reference > 0.9).float().mean()),
        "positions_reference_below_uniform": float(
            (reference < 1.0 / weights.shape[1]).float().mean()
        ),
        "sampling_offset_abs_mean": sum(offsets) / max(1, len(offsets)),
        "sampling_conv_identity_distance": _identity_distance(module.sampling.sample.conv),
        "mAP_window": window["mAP"],
        "mAP_reference_alone": alone["mAP"],
        **{f"{k}_window": v for k, v in window.items() if k.startswith("mAP_")},
        **{f"{k}_reference_alone": v for k, v in alone.items() if k.startswith("mAP_")},
    }
    for key, value in result.items():
        print(f"{key:<40}{value:.4f}" if isinstance(value, float) else f"{key:<40}{value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
