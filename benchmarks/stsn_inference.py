"""
Per-frame inference cost and peak memory of STSN at several K against SSN, in one run.

Models are built from one config (random weights: only cost is measured): SSN
(``SSNAggregation``, window (0, 0)) and STSN with windows (K, K) for each ``--k``. Each streams
the same random video through the test API (``model.reset/step/flush``: every frame's backbone
runs once, its features are cached while a window needs them) in a fresh process of its own,
so that peak memory is its own: the peak resident set size on CPU (Linux ``VmHWM``), the peak
of allocated memory on CUDA, both above what the built model holds before streaming. Time is
split into backbone, temporal aggregation and the rest (RPN, ROI heads, post-processing). A
last run repeats the largest K with all 2K+1 pairs in one pass of the sampling block.

The paper's target: per-frame cost grows sub-linearly in K because the backbone is shared
(only the sampling block and the embedding run 2K+1 times per frame), and memory stays
bounded by the cache of 2K+1 feature maps (``MODEL.STSN.PAIRS_PER_PASS`` pairs are sampled at
a time).

    python benchmarks/stsn_inference.py --config-file configs/synthetic/stsn.yaml --size 128 160
    python benchmarks/stsn_inference.py --config-file configs/stsn_R50_DC5.yaml --device cuda
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
    """Build one model, stream the video once to warm up and once timed; returns a dict."""
    torch.set_num_threads(threads)
    cfg = cfg.clone()
    cfg.merge_from_list(list(opts))
    device = cfg.MODEL.DEVICE
    model = random_model(cfg)
    video = random_video(frames, *size)
    # Memory is measured from the built model on, warm-up included: memory the allocator keeps
    # after the warm-up would otherwise hide the streaming's own peak from the RSS.
    peak = CudaPeak(device) if device.startswith("cuda") else CpuPeak()
    with peak:
        stream(model, video[:warmup])
        with torch.no_grad():
            per_frame = model.backbone(model.preprocess_image([video[0]]).tensor)
        feature_bytes = sum(x.numel() * x.element_size() for x in per_frame.values())
        del per_frame
        backbone = CallTimer(model.backbone, "forward", device)
        aggregation = CallTimer(model.temporal_aggregation, "forward", device)
        seconds = seconds_per_frame(model, video, device)
    before, after = cfg.MODEL.VIDEO.TEST_WINDOW
    return {
        "aggregation": cfg.MODEL.VIDEO.AGGREGATION,
        "window": [before, after],
        "s_per_frame": seconds,
        "backbone_s_per_frame": backbone.seconds / frames,
        "aggregation_s_per_frame": aggregation.seconds / frames,
        "peak_mib": peak.peak_bytes / MIB,
        "cache_bound_mib": (before + after + 1) * feature_bytes / MIB,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--k", type=int, nargs="+", default=(1, 4, 13), help="STSN windows K")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_arguments(parser, "configs/stsn_R50_DC5.yaml")
    args = parser.parse_args()
    cfg = load_config(args)

    def stsn_opts(k):
        return ["MODEL.VIDEO.AGGREGATION", "STSNAggregation", "MODEL.VIDEO.TEST_WINDOW", (k, k)]

    runs = [
        ("SSN", ["MODEL.VIDEO.AGGREGATION", "SSNAggregation", "MODEL.VIDEO.TEST_WINDOW", (0, 0)])
    ]
    runs += [(f"STSN K={k}", stsn_opts(k)) for k in args.k]
    # The largest window with all its pairs in one pass: what PAIRS_PER_PASS saves.
    runs.append(
        (f"K={max(args.k)} 1 pass", stsn_opts(max(args.k)) + ["MODEL.STSN.PAIRS_PER_PASS", 0])
    )
    common = (tuple(args.size), args.frames, args.warmup, args.threads)
    results = {
        "device": device_name(args.device),
        "threads": args.threads,
        "config": args.config_file,
        "size": list(args.size),
        "frames": args.frames,
        "pairs_per_pass": cfg.MODEL.STSN.PAIRS_PER_PASS,
        "runs": {name: in_fresh_process(measure, cfg, opts, *common) for name, opts in runs},
    }

    base = results["runs"]["SSN"]
    print(
        f"{results['device']}, {args.threads} threads, {args.config_file}, frames "
        f"{args.size[0]}x{args.size[1]}, {args.frames} frames, "
        f"{results['pairs_per_pass']} pairs per pass"
    )
    header = ["model", "s/frame", "x SSN", "backbone", "aggreg.", "rest", "peak MiB", "cache MiB"]
    print(f"{header[0]:<12}" + "".join(f"{h:>10}" for h in header[1:]))
    for name, r in results["runs"].items():
        rest = r["s_per_frame"] - r["backbone_s_per_frame"] - r["aggregation_s_per_frame"]
        cells = [
            f"{r['s_per_frame']:.4f}",
            f"{r['s_per_frame'] / base['s_per_frame']:.2f}",
            f"{r['backbone_s_per_frame']:.4f}",
            f"{r['aggregation_s_per_frame']:.4f}",
            f"{rest:.4f}",
            f"{r['peak_mib']:.1f}",
            f"{r['cache_bound_mib']:.1f}",
        ]
        print(f"{name:<12}" + "".join(f"{c:>10}" for c in cells))
    print("frames per window 2K+1: " + ", ".join(f"K={k}: {2 * k + 1}" for k in args.k))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
