"""
Streaming speed of every method: frames per second, parameters and peak memory, one run.

Each config is built (random weights: only cost is measured) and streams the same random video
of ``--frames`` frames through the test API, batch 1 (:func:`vod_d2.engine.run_on_video`, the
video's length known, so that SparseVOD prefetches its support frames), after a warm-up
video, each model in a process of its own (and its peak memory in another). Printed: seconds and frames per second, the speed
against the first config (the baseline), parameters and the peak memory the streaming adds.

    python benchmarks/speed.py                                   # paper configs, 600x1000
    python benchmarks/speed.py --synthetic --size 128 160 --json speed.json   # the plot's
"""

import argparse
import json
import time

import torch
from _memory import CpuPeak, CudaPeak, in_fresh_process, release_freed_memory
from _streaming import device_name, random_video, synchronize
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vod_d2 import add_vod_config
from vod_d2.engine import run_on_video

# method -> (paper config, synthetic config); the first is every table's baseline.
METHODS = {
    "single frame R-FCN": ("single_frame_R101_RFCN", "rfcn"),
    "single frame Faster R-CNN DC5": ("single_frame_R101_DC5", "single_frame"),
    "SSN": ("ssn_R101_RFCN_deform", "ssn"),
    "STSN": ("stsn_R101_RFCN_deform", "stsn"),
    "STMN": ("stmn_R101_RFCN", "stmn"),
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
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    video = random_video(frames, *size)
    if memory:
        release_freed_memory()
        with CudaPeak(device) if device.startswith("cuda") else CpuPeak() as peak:
            list(run_on_video(model, video[:warmup], warmup, video.__getitem__))
            list(run_on_video(model, video, len(video), video.__getitem__))
        return {"peak_MiB": peak.peak_bytes / 2**20}
    list(run_on_video(model, video[:warmup], warmup, video.__getitem__))
    synchronize(device)
    start = time.perf_counter()
    outputs = list(run_on_video(model, video, len(video), video.__getitem__))
    synchronize(device)
    seconds = time.perf_counter() - start
    assert len(outputs) == len(video)
    return {
        "config": path,
        "s_per_frame": seconds / len(video),
        "fps": len(video) / seconds,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }


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
    args = parser.parse_args()
    runs = {}
    for method in args.methods:
        job = (config_path(method, args.synthetic), args.frames, args.size, args.warmup)
        job += (args.device, args.threads)
        runs[method] = {
            **in_fresh_process(measure, *job),
            **in_fresh_process(measure, *job, True),
        }
    threads = args.threads or torch.get_num_threads()
    print(
        f"{device_name(args.device)}, {threads} threads, a {args.frames}-frame video of "
        f"{args.size[0]}x{args.size[1]}, batch 1, streaming"
    )
    base = runs[args.methods[0]]["s_per_frame"]
    header = f"{'method':<32}{'config':<42}{'s/frame':>9}{'fps':>8}{'speed':>8}"
    print(f"{header}{'params M':>10}{'peak MiB':>10}")
    for method, run in runs.items():
        print(
            f"{method:<32}{run['config']:<42}{run['s_per_frame']:>9.3f}{run['fps']:>8.2f}"
            f"{base / run['s_per_frame']:>7.2f}x{run['params_M']:>10.1f}{run['peak_MiB']:>10.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device_name(args.device), "size": args.size, "runs": runs}, f, indent=2
            )


if __name__ == "__main__":
    main()
