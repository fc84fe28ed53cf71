"""
Speed of the key-frame methods (LSTS, Impression Network, DFF) against the per-frame R-FCN.

Every model is built from its config (ResNet-101 R-FCN by default, random weights: only cost is
measured) and streams the same random video through the test API, once to warm up and once
timed; its peak memory is measured in a second process. Printed per model: time per frame,
the ratio to the per-frame baseline, parameters, and the peak memory the streaming adds. Each
model's parts are timed too: the heavy path (the feature network on key frames), the light path
and the key-frame module, so that LSTS's best ratio with its module reduced to the Transform unit
is printed, and Impression's measured cost can be set against the paper's estimate
``r ~ O(F) / O(N_feat) + 1 / l`` (F the flow network, l the key-frame interval), here with
measured times in place of O(.).

The papers: LSTS 23.0 fps against its per-frame baseline's 10.1 (2.3x, Titan V); Impression
Network 50 ms against 156 ms per frame (3.1x, GTX 1060).

    python benchmarks/key_frame_inference.py --size 320 544 --frames 30     # CPU, paper widths
    python benchmarks/key_frame_inference.py --size 64 80 --frames 12 --warmup 2 \\
        --baseline configs/synthetic/rfcn.yaml --methods configs/synthetic/lsts.yaml
"""

import argparse
import json

import torch
from _memory import in_fresh_process
from _streaming import (
    CallTimer,
    build_random_model,
    device_name,
    random_video,
    seconds_per_frame,
    stream,
    streaming_peak_mib,
)
from detectron2.config import get_cfg

from vod_d2 import add_vod_config
from vod_d2.modeling import KeyFrameRCNN
from vod_d2.modeling.temporal.lsts import TransformUnit

BASELINE = "configs/single_frame_R101_RFCN.yaml"
METHODS = ["configs/lsts_R101.yaml", "configs/impression_R101.yaml", "configs/dff_R101.yaml"]


def _part_timers(model, device):
    """Timers of the model's parts, by label: the heavy path, the light path, the flow net, the
    key-frame module's steps and LSTS's Transform unit (the whole backbone for a per-frame
    model)."""
    if not isinstance(model, KeyFrameRCNN):
        return {"backbone": CallTimer(model.backbone, "forward", device)}
    backbone, module = model.backbone, model.key_frames
    parts = [(backbone, "forward_light", "light path"), (backbone, "forward_rest", "heavy rest")]
    if not hasattr(backbone, "forward_light"):
        parts = [(backbone, "forward", "heavy path (N_feat)")]
    if getattr(module, "flow_net", None) is not None:
        parts.append((module.flow_net, "forward", "flow net"))
    parts += [(module, name, f"module {name}") for name in ("key_frame", "propagate")]
    parts += [
        (m, "forward", "transform unit") for m in module.modules() if isinstance(m, TransformUnit)
    ]
    return {label: CallTimer(owner, name, device) for owner, name, label in parts}


def _measure(path, frames, size, warmup, device, threads, memory=False):
    """
    One model's time per frame and its parts, or with ``memory`` the peak memory its streaming
    adds (each in a process of its own: release_freed_memory() would slow down the allocations
    timed).
    """
    if threads:
        torch.set_num_threads(threads)
    video = random_video(frames, *size)
    cfg, model = build_random_model(path, device)
    if memory:
        return {"peak_MiB": streaming_peak_mib(model, video, warmup, device)}
    stream(model, video[:warmup])
    timers = _part_timers(model, device)
    seconds = seconds_per_frame(model, video, device)
    return {
        "config": path,
        "s_per_frame": seconds,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "parts_s_per_frame": {k: t.seconds / len(video) for k, t in timers.items()},
        "key_frame_interval": cfg.MODEL.VIDEO.KEY_FRAME_INTERVAL,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 544), help="frame H W")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    runs = []
    for path in [args.baseline, *args.methods]:
        job = (path, args.frames, args.size, args.warmup, args.device, args.threads)
        runs.append({**in_fresh_process(_measure, *job), **in_fresh_process(_measure, *job, True)})
    base, runs = runs[0], runs[1:]
    threads = args.threads or torch.get_num_threads()
    print(
        f"{device_name(args.device)}, {threads} threads, "
        f"{args.frames} frames of {args.size[0]}x{args.size[1]}"
    )
    print(f"{'model':<42}{'s/frame':>9}{'speed-up':>10}{'params M':>10}{'peak MiB':>10}")
    for run in [base, *runs]:
        speed_up = base["s_per_frame"] / run["s_per_frame"]
        print(
            f"{run['config']:<42}{run['s_per_frame']:>9.3f}{speed_up:>9.2f}x"
            f"{run['params_M']:>10.1f}{run['peak_MiB']:>10.0f}"
        )
        for part, seconds in sorted(run["parts_s_per_frame"].items()):
            print(f"    {part:<38}{seconds:>9.3f}")
        transform = run["parts_s_per_frame"].get("transform unit")
        if transform is not None:
            # What the key-frame module would cost if it were its Transform unit alone (LSTS:
            # SRFU's and DFA's sampling, embeddings and aggregation free).
            parts = run["parts_s_per_frame"]
            floor = run["s_per_frame"] - parts["module key_frame"] - parts["module propagate"]
            floor += transform
            print(
                f"    with only the transform unit in the module: {floor:.3f} s/frame, "
                f"{base['s_per_frame'] / floor:.2f}x at best"
            )
        flow = run["parts_s_per_frame"].get("flow net")
        heavy = run["parts_s_per_frame"].get("heavy path (N_feat)")
        if flow and heavy:
            interval = run["key_frame_interval"]
            # Per-frame costs: N_feat runs on 1 frame in l, the flow net on every frame (and
            # once more per key frame with the impression), so per call they are:
            n_feat_call = heavy * interval
            flow_call = flow * args.frames / max(1, _flow_calls(args.frames, interval, run))
            estimate = flow_call / n_feat_call + 1 / interval
            measured = run["s_per_frame"] / base["s_per_frame"]
            print(
                f"    r measured {measured:.3f} (1/r = {1 / measured:.2f}x); estimate "
                f"O(F)/O(N_feat) + 1/l = {flow_call:.3f}/{n_feat_call:.3f} + 1/{interval} "
                f"= {estimate:.3f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline": base, "methods": runs, "size": args.size}, f, indent=2)


def _flow_calls(num_frames, interval, run):
    """Flow-net calls over the video: every non-key frame, plus each key frame after the first
    when the impression memory is on (its config says)."""
    num_keys = -(-num_frames // interval)
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(run["config"])
    return num_frames - num_keys + (num_keys - 1 if cfg.MODEL.IMPRESSION.MEMORY else 0)


if __name__ == "__main__":
    main()
