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

With ``--flows``, the flow-guided methods (DFF, Impression) are timed again with each flow
network in place of their config's (``NAME@INPUT_SCALE``, i.e. ``MODEL.FLOW.NAME`` and
``MODEL.FLOW.INPUT_SCALE``; by default FlowNet-S and RAFT-small at the papers' half resolution,
RAFT-small at full resolution, and ZeroFlow: the warp alone, no flow network, the lower bound
on a flow-guided method's cost). A second table gives each one's time per frame, its ratio to
the per-frame baseline of the same run, and the flow network's own cost per call against the
heavy path's per key frame: a flow network that costs as much as the feature network it
replaces saves nothing on the frames it propagates to. (Peak memory only for the configs'
own flow networks.)

The papers: LSTS 23.0 fps against its per-frame baseline's 10.1 (2.3x, Titan V); Impression
Network 50 ms against 156 ms per frame (3.1x, GTX 1060).

    python benchmarks/key_frame_inference.py --size 320 544 --frames 30     # CPU, paper widths
    python benchmarks/key_frame_inference.py --size 320 544 --frames 30 --flows
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

from vod_d2.modeling import KeyFrameRCNN
from vod_d2.modeling.temporal.lsts import TransformUnit

BASELINE = "configs/single_frame_R101_RFCN.yaml"
METHODS = ["configs/lsts_R101.yaml", "configs/impression_R101.yaml", "configs/dff_R101.yaml"]
FLOWS = ["FlowNetS@0.5", "RAFTSmall@0.5", "RAFTSmall@1.0", "ZeroFlow"]
HEAVY = "heavy path (N_feat)"


def _part_timers(model, device):
    """Timers of the model's parts, by label: the heavy path, the light path, the flow net, the
    key-frame module's steps and LSTS's Transform unit (the whole backbone for a per-frame
    model)."""
    if not isinstance(model, KeyFrameRCNN):
        return {"backbone": CallTimer(model.backbone, "forward", device)}
    backbone, module = model.backbone, model.key_frames
    parts = [(backbone, "forward_light", "light path"), (backbone, "forward_rest", "heavy rest")]
    if not hasattr(backbone, "forward_light"):
        parts = [(backbone, "forward", HEAVY)]
    if getattr(module, "flow_net", None) is not None:
        parts.append((module.flow_net, "forward", "flow net"))
    parts += [(module, name, f"module {name}") for name in ("key_frame", "propagate")]
    parts += [
        (m, "forward", "transform unit") for m in module.modules() if isinstance(m, TransformUnit)
    ]
    return {label: CallTimer(owner, name, device) for owner, name, label in parts}


def _flow_opts(flow):
    """Config overrides of a flow network given as ``NAME`` or ``NAME@INPUT_SCALE``."""
    name, _, scale = flow.partition("@")
    return ["MODEL.FLOW.NAME", name] + (["MODEL.FLOW.INPUT_SCALE", scale] if scale else [])


def _measure(path, opts, frames, size, warmup, device, threads, memory=False):
    """
    One model's time per frame and its parts, or with ``memory`` the peak memory its streaming
    adds (each in a process of its own: release_freed_memory() would slow down the allocations
    timed). ``opts``: config overrides, KEY VALUE ...
    """
    if threads:
        torch.set_num_threads(threads)
    video = random_video(frames, *size)
    cfg, model = build_random_model(path, device, opts)
    if memory:
        return {"peak_MiB": streaming_peak_mib(model, video, warmup, device)}
    stream(model, video[:warmup])
    timers = _part_timers(model, device)
    seconds = seconds_per_frame(model, video, device)
    has_flow = getattr(getattr(model, "key_frames", None), "flow_net", None) is not None
    return {
        "config": path,
        "opts": list(opts),
        "flow": [cfg.MODEL.FLOW.NAME, cfg.MODEL.FLOW.INPUT_SCALE] if has_flow else None,
        "s_per_frame": seconds,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "parts_s_per_frame": {k: t.seconds / len(video) for k, t in timers.items()},
        "parts_calls": {k: t.calls for k, t in timers.items()},
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
    parser.add_argument(
        "--flows",
        nargs="*",
        help=f"also time the flow-guided methods with each of these flow networks, NAME or "
        f"NAME@INPUT_SCALE (no value: {' '.join(FLOWS)})",
    )
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    flows = FLOWS if args.flows == [] else args.flows or []
    frames = (args.frames, args.size, args.warmup, args.device, args.threads)
    runs = []
    for path in [args.baseline, *args.methods]:
        job = (path, (), *frames)
        runs.append({**in_fresh_process(_measure, *job), **in_fresh_process(_measure, *job, True)})
    flow_runs = []
    for run in runs[1:] if flows else ():
        if not run["flow"]:
            continue
        # The config's own flow network first, then the others.
        name, scale = run["flow"]
        flow_runs.append({**run, "flow_label": f"{name}@{scale:g}"})
        for flow in flows:
            name, _, scale = flow.partition("@")
            if [name, float(scale or run["flow"][1])] != run["flow"]:
                measured = in_fresh_process(_measure, run["config"], _flow_opts(flow), *frames)
                flow_runs.append({**measured, "flow_label": flow})
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
        heavy = run["parts_s_per_frame"].get(HEAVY)
        if flow and heavy:
            interval = run["key_frame_interval"]
            # N_feat runs on 1 frame in l, the flow net on every other frame (and once more per
            # key frame with the impression): their costs per call.
            n_feat_call = _seconds_per_call(run, HEAVY, args.frames)
            flow_call = _seconds_per_call(run, "flow net", args.frames)
            estimate = flow_call / n_feat_call + 1 / interval
            measured = run["s_per_frame"] / base["s_per_frame"]
            print(
                f"    r measured {measured:.3f} (1/r = {1 / measured:.2f}x); estimate "
                f"O(F)/O(N_feat) + 1/l = {flow_call:.3f}/{n_feat_call:.3f} + 1/{interval} "
                f"= {estimate:.3f}"
            )
    if flow_runs:
        _print_flows(base, flow_runs, args.frames)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"baseline": base, "methods": runs, "flows": flow_runs, "size": args.size},
                f,
                indent=2,
            )


def _seconds_per_call(run, part, num_frames):
    """A timed part's seconds per call over the timed video (None if it was never called)."""
    calls = run["parts_calls"].get(part)
    return run["parts_s_per_frame"][part] * num_frames / calls if calls else None


def _print_flows(base, flow_runs, num_frames):
    """The flow-guided methods with each flow network: time per frame, ratio to the baseline,
    the flow network's cost per call against N_feat's per key frame, and its share of the
    method's time."""
    print(
        f"\nwith each flow network (MODEL.FLOW.NAME@INPUT_SCALE), against "
        f"{base['config']}'s {base['s_per_frame']:.3f} s/frame"
    )
    width = max(len(run["config"]) for run in flow_runs) + 2
    print(
        f"{'model':<{width}}{'flow':<15}{'s/frame':>8}{'speed-up':>10}{'flow s/call':>13}"
        f"{'N_feat s/call':>15}{'flow/N_feat':>13}{'flow share':>12}"
    )
    for run in flow_runs:
        flow_call = _seconds_per_call(run, "flow net", num_frames)
        n_feat_call = _seconds_per_call(run, HEAVY, num_frames)
        relative = flow_call / n_feat_call if flow_call and n_feat_call else float("nan")
        share = run["parts_s_per_frame"].get("flow net", 0.0) / run["s_per_frame"]
        print(
            f"{run['config']:<{width}}{run['flow_label']:<15}{run['s_per_frame']:>8.3f}"
            f"{base['s_per_frame'] / run['s_per_frame']:>9.2f}x{flow_call or 0.0:>13.4f}"
            f"{n_feat_call or float('nan'):>15.3f}{relative:>13.3f}{share:>12.0%}"
        )


if __name__ == "__main__":
    main()
