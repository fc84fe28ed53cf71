"""
Single-frame R-FCN against the DC5 Faster R-CNN at the papers' widths: parameters and time.

Both detectors are built from their configs (ResNet-101 by default, random weights: only cost is
measured) and stream the same random video through the test API (``model.reset/step/flush``),
once to warm up and once timed. Time per frame is split into the backbone (the feature network:
ResNet, plus R-FCN's feature reduction) and the rest (RPN, ROI heads, post-processing).
Parameters are counted per part, with each model's largest layer.

The papers' figures: R-FCN R-101 has about 60 M parameters (LSTS Table 1: 60.0 M); the DC5
Faster R-CNN's first fully connected layer alone reads 2048 x 7 x 7 pooled values.

    python benchmarks/rfcn_vs_faster.py                       # R-101, 600 x 1000 frames, CPU
    python benchmarks/rfcn_vs_faster.py --size 64 80 --frames 2 --warmup 1
"""

import argparse
import json

import torch
from _streaming import (
    CallTimer,
    device_name,
    random_model,
    random_video,
    seconds_per_frame,
    stream,
)

from vod_d2.engine import load_config

MODELS = {
    "R-FCN": "configs/single_frame_R101_RFCN.yaml",
    "Faster R-CNN DC5": "configs/single_frame_R101_DC5.yaml",
}


def _load(path, device, opts):
    cfg = load_config(path, opts, register_datasets=True)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    return cfg


def _count(module):
    return sum(p.numel() for p in module.parameters())


def parameters(model):
    """Parameter counts: total, per part, and the largest layer (name, count)."""
    layers = {}
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        layers[layer] = layers.get(layer, 0) + p.numel()
    largest = max(layers, key=layers.get)
    return {
        "total": _count(model),
        "backbone": _count(model.backbone),
        "rpn": _count(model.proposal_generator),
        "roi_heads": _count(model.roi_heads),
        "largest_layer": [largest, layers[largest]],
    }


def measure(cfg, size, frames, warmup):
    """Build one model, stream a warm-up video and a timed one; returns a dict."""
    device = cfg.MODEL.DEVICE
    model = random_model(cfg)
    video = random_video(frames, *size)
    stream(model, video[:warmup])
    backbone = CallTimer(model.backbone, "forward", device)
    return {
        "parameters": parameters(model),
        "s_per_frame": seconds_per_frame(model, video, device),
        "backbone_s_per_frame": backbone.seconds / frames,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--rfcn-config", default=MODELS["R-FCN"])
    parser.add_argument("--faster-config", default=MODELS["Faster R-CNN DC5"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(600, 1000), help="frame H W")
    parser.add_argument("--frames", type=int, default=10, help="frames of the timed video")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("opts", nargs="...", help="config overrides for both, KEY VALUE ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    configs = {"R-FCN": args.rfcn_config, "Faster R-CNN DC5": args.faster_config}
    runs = {
        name: measure(_load(path, args.device, args.opts), args.size, args.frames, args.warmup)
        for name, path in configs.items()
    }
    results = {
        "device": device_name(args.device),
        "threads": args.threads,
        "size": list(args.size),
        "frames": args.frames,
        "configs": configs,
        "runs": runs,
    }

    print(
        f"{results['device']}, {args.threads} threads, frames {args.size[0]}x{args.size[1]}, "
        f"{args.frames} frames"
    )
    header = ["params M", "backbone", "RPN", "ROI heads", "s/frame", "backbone", "rest"]
    print(f"{'model':<18}" + "".join(f"{h:>10}" for h in header) + "  largest layer")
    for name, r in runs.items():
        p = r["parameters"]
        cells = [f"{p[k] / 1e6:.1f}" for k in ("total", "backbone", "rpn", "roi_heads")]
        cells += [
            f"{r['s_per_frame']:.3f}",
            f"{r['backbone_s_per_frame']:.3f}",
            f"{r['s_per_frame'] - r['backbone_s_per_frame']:.3f}",
        ]
        layer, count = p["largest_layer"]
        print(
            f"{name:<18}" + "".join(f"{c:>10}" for c in cells) + f"  {layer} ({count / 1e6:.1f} M)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
