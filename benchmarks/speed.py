"""
Streaming speed of every method: frames per second, parameters and peak memory, one run.

Each config is built (random weights: only cost is measured) and streams the same random video
of ``--frames`` frames through the test API, batch 1 (:func:`vod_d2.engine.run_on_video`, the
video's length known, so that SparseVOD prefetches its support frames), after a warm-up
video, each model in a process of its own (and its peak memory in another). Printed: seconds
and frames per second, the speed against the first config (the baseline), parameters and the
peak memory the streaming adds.

    python benchmarks/speed.py                                   # paper configs, 600x1000
    python benchmarks/speed.py --synthetic --size 128 160 --json speed.json   # the plot's
    python benchmarks/speed.py --synthetic --size 128 160 --exported --methods STMN LSTS

With ``--exported`` each method is also exported (tools/export_model.py's AOTInductor package
of its causal variant, compiled in the run: minutes per method) and the same frames are timed
through the package and through the eager causal variant (``model.step`` on a video of unknown
length, what the package computes), one run each after the warm-up: the exported column.
"""

import argparse
import json
import tempfile
import time

import torch
from _memory import in_fresh_process
from _streaming import (
    build_random_model,
    device_name,
    random_model,
    random_video,
    seconds_per_frame,
    stream,
    streaming_peak_mib,
    synchronize,
)

# method -> (paper config, synthetic config); the first is every table's baseline.
METHODS = {
    "single frame R-FCN": ("single_frame_R101_RFCN", "rfcn"),
    "single frame Faster R-CNN DC5": ("single_frame_R101_DC5", "single_frame"),
    "SSN": ("ssn_R101_RFCN_deform", "ssn_rfcn"),
    "STSN": ("stsn_R101_RFCN_deform", "stsn_rfcn"),
    "STMN": ("stmn_R101_RFCN", "stmn_rfcn"),
    "STMN (Faster R-CNN DC5)": ("stmn_R101_DC5", "stmn"),
    "LSTS": ("lsts_R101", "lsts"),
    "Impression Network": ("impression_R101", "impression"),
    "DFF": ("dff_R101", "dff"),
    "Sparse R-CNN": ("sparse_rcnn_R50_FPN", "sparse_rcnn"),
    "SparseVOD": ("sparsevod_R50_FPN", "sparsevod"),
}


def config_path(method: str, synthetic: bool) -> str:
    paper, small = METHODS[method]
    return f"configs/synthetic/{small}.yaml" if synthetic else f"configs/{paper}.yaml"


def measure(path, frames, size, warmup, device, threads, memory=False):
    """
    One model's time per frame, or with ``memory`` the peak memory its streaming adds (each in
    a process of its own: release_freed_memory() would slow down the allocations timed).
    """
    if threads:
        torch.set_num_threads(threads)
    _, model = build_random_model(path, device)
    video = random_video(frames, *size)
    if memory:
        return {"peak_MiB": streaming_peak_mib(model, video, warmup, device)}
    stream(model, video[:warmup])
    seconds = seconds_per_frame(model, video, device)
    return {
        "config": path,
        "s_per_frame": seconds,
        "fps": 1 / seconds,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def measure_exported(path, frames, size, warmup, device, threads):
    """
    Seconds per frame of the causal variant of one model, eager and as its exported package,
    on the same frames (after ``warmup`` frames each), and the package's compile time.
    """
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config, make_online
    from vod_d2.export import export_model
    from vod_d2.export.runtime import ExportedStep, ReservoirSlots, postprocess

    if threads:
        torch.set_num_threads(threads)
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = device
    make_online(cfg)
    model = random_model(cfg)
    video = random_video(warmup + frames, *size)
    with tempfile.TemporaryDirectory() as folder:
        description = export_model(cfg, folder, model=model, frame_size=size, onnx="off")
        step = ExportedStep(folder)
        sampling = description.get("support_sampling")
        slots = ReservoirSlots(sampling["num"], sampling["seed"]) if sampling else None
        state = step.reset(video[0]["image"])
        timed = {}
        with torch.no_grad():
            for t, frame in enumerate(video):
                if t == warmup:
                    synchronize(device)
                    start = time.perf_counter()
                extra = [torch.tensor(slots.next_slot())] if slots else []
                boxes, scores, classes, count, *state = step(frame["image"], *extra, *state)
                # As model.step's detector_postprocess.
                postprocess(boxes, scores, classes, count, size, size)
            synchronize(device)
            timed["exported_s_per_frame"] = (time.perf_counter() - start) / frames
            model.reset(None)
            for t, frame in enumerate(video):
                if t == warmup:
                    synchronize(device)
                    start = time.perf_counter()
                model.step(frame)
            synchronize(device)
            timed["eager_causal_s_per_frame"] = (time.perf_counter() - start) / frames
    timed["aoti_compile_s"] = description["timings"]["aoti_compile_s"]
    timed["fixed_size"] = description["frame"]["fixed_size"] is not None
    return timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--synthetic", action="store_true", help="the synthetic configs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(600, 1000), help="frame H W")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument(
        "--exported",
        action="store_true",
        help="also time each method's exported package against its eager causal variant",
    )
    args = parser.parse_args()
    runs = {}
    for method in args.methods:
        job = (config_path(method, args.synthetic), args.frames, args.size, args.warmup)
        job += (args.device, args.threads)
        runs[method] = {
            **in_fresh_process(measure, *job),
            **in_fresh_process(measure, *job, True),
        }
        if args.exported:
            runs[method].update(in_fresh_process(measure_exported, *job))
    threads = args.threads or torch.get_num_threads()
    print(
        f"{device_name(args.device)}, {threads} threads, a {args.frames}-frame video of "
        f"{args.size[0]}x{args.size[1]}, batch 1, streaming"
    )
    base = runs[args.methods[0]]["s_per_frame"]
    header = f"{'method':<32}{'config':<42}{'s/frame':>9}{'fps':>8}{'speed':>8}"
    exported = f"{'causal s/f':>11}{'exported s/f':>13}{'speed-up':>9}" if args.exported else ""
    print(f"{header}{'params M':>10}{'peak MiB':>10}{exported}")
    for method, run in runs.items():
        line = (
            f"{method:<32}{run['config']:<42}{run['s_per_frame']:>9.3f}{run['fps']:>8.2f}"
            f"{base / run['s_per_frame']:>7.2f}x{run['params_M']:>10.1f}{run['peak_MiB']:>10.0f}"
        )
        if args.exported:
            eager, package = run["eager_causal_s_per_frame"], run["exported_s_per_frame"]
            line += f"{eager:>11.3f}{package:>13.3f}{eager / package:>8.2f}x"
        print(line)
    if args.exported:
        print(
            "causal s/f: the eager causal variant (what is exported), exported s/f: its "
            "AOTInductor package, on the same frames"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device_name(args.device), "size": args.size, "runs": runs}, f, indent=2
            )


if __name__ == "__main__":
    main()
