"""
Per-frame inference cost and peak memory of SparseVOD with 2 and 6 support frames against the
single-frame Sparse R-CNN, in one run.

Models are built from one config (random weights: only cost is measured): Sparse R-CNN
(``MODEL.META_ARCHITECTURE SparseRCNN``), SparseVOD with ``MODEL.SPARSEVOD.TEST_NUM_SUPPORT``
set to each ``--supports``, and, at the largest, the Table 2 ablations with TFE only and SPFA
only. Each streams the same random video through the test API (``run_on_video``: the support
frames, spread over the whole video, are primed first, then every frame is detected as it
arrives; every frame's backbone runs once) in a fresh process of its own, so that peak memory
is its own: the peak resident set size on CPU (Linux ``VmHWM``), the peak of allocated memory on
CUDA, both above what the built model holds before streaming. Time per frame is split into the
backbone, the support frames' single-frame pass through the stages (SPFA's support features,
once per support frame and video) and the target's head (with TFE and SPFA).

The paper's figures (Table 2, A100): 24.3 fps single frame, 17.7 with SPFA only, 14.9 with TFE
only, 14.4 with both (6 support frames); 17.7 fps at 2 support frames (Fig. 5).

    python benchmarks/sparsevod_inference.py --config-file configs/synthetic/sparsevod.yaml \
        --size 128 160
    python benchmarks/sparsevod_inference.py --config-file configs/sparsevod_R50_FPN.yaml \
        --device cuda
"""

import argparse
import json

import torch
from _memory import CpuPeak, CudaPeak, in_fresh_process
from _streaming import (
    CallTimer,
    add_arguments,
    device_name,
    load_config,
    random_model,
    random_video,
    seconds_per_frame,
    stream,
)

MIB = 2.0**20


def measure(cfg, opts, size, frames, warmup, threads):
    """Build one model, stream a video once to warm up and once timed; returns a dict."""
    torch.set_num_threads(threads)
    cfg = cfg.clone()
    cfg.merge_from_list(list(opts))
    device = cfg.MODEL.DEVICE
    model = random_model(cfg)
    video = random_video(frames, *size)
    peak = CudaPeak(device) if device.startswith("cuda") else CpuPeak()
    with peak:
        stream(model, video[:warmup])
        backbone = CallTimer(model.backbone, "forward", device)
        head = CallTimer(model.head, "forward", device)
        # The single-frame head has no support pass.
        support = (
            CallTimer(model.head, "support_object_features", device)
            if hasattr(model.head, "support_object_features")
            else None
        )
        seconds = seconds_per_frame(model, video, device)
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "s_per_frame": seconds,
        "backbone_s_per_frame": backbone.seconds / frames,
        "support_pass_s_per_frame": support.seconds / frames if support else 0.0,
        "head_s_per_frame": head.seconds / frames,
        "peak_mib": peak.peak_bytes / MIB,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument(
        "--supports", type=int, nargs="+", default=(2, 6), help="SparseVOD support frames"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_arguments(parser, "configs/sparsevod_R50_FPN.yaml")
    args = parser.parse_args()
    cfg = load_config(args)

    def sparsevod(num, tfe=True, spfa=True):
        return [
            "MODEL.META_ARCHITECTURE", "SparseVOD",
            "MODEL.SPARSEVOD.TEST_NUM_SUPPORT", num,
            "MODEL.SPARSEVOD.TFE.ENABLED", tfe,
            "MODEL.SPARSEVOD.SPFA.ENABLED", spfa,
        ]  # fmt: skip

    most = max(args.supports)
    runs = [("Sparse R-CNN", ["MODEL.META_ARCHITECTURE", "SparseRCNN"])]
    runs += [(f"SparseVOD T={n}", sparsevod(n)) for n in args.supports]
    runs += [(f"TFE only T={most}", sparsevod(most, spfa=False))]
    runs += [(f"SPFA only T={most}", sparsevod(most, tfe=False))]
    common = (tuple(args.size), args.frames, args.warmup, args.threads)
    results = {
        "device": device_name(args.device),
        "threads": args.threads,
        "config": args.config_file,
        "size": list(args.size),
        "frames": args.frames,
        "runs": {name: in_fresh_process(measure, cfg, opts, *common) for name, opts in runs},
    }

    base = results["runs"]["Sparse R-CNN"]
    print(
        f"{results['device']}, {args.threads} threads, {args.config_file}, frames "
        f"{args.size[0]}x{args.size[1]}, {args.frames} frames per video"
    )
    header = ["model", "s/frame", "fps", "x single", "backbone", "supports", "head", "peak MiB"]
    print(f"{header[0]:<18}" + "".join(f"{h:>10}" for h in header[1:]))
    for name, r in results["runs"].items():
        cells = [
            f"{r['s_per_frame']:.4f}",
            f"{1 / r['s_per_frame']:.1f}",
            f"{r['s_per_frame'] / base['s_per_frame']:.2f}",
            f"{r['backbone_s_per_frame']:.4f}",
            f"{r['support_pass_s_per_frame']:.4f}",
            f"{r['head_s_per_frame']:.4f}",
            f"{r['peak_mib']:.1f}",
        ]
        print(f"{name:<18}" + "".join(f"{c:>10}" for c in cells))
    print("supports: the support frames' own pass through the stages, once per video")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
