"""
Time per frame of a window method on the FPN detector against the single-frame FPN detector, in
one run: detectron2's model zoo R50-FPN (``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``) as
``VideoRCNN``, single frame and STSN on p2-p6 with the README's keys ("Video heads in your
detectron2 model"), and on p3-p6; or with ``--synthetic``
``configs/synthetic/single_frame_fpn.yaml`` and ``stsn_fpn.yaml`` (on p2-p6 and p3-p6). Random
weights (only cost is measured; all pool the same proposals, see ``_streaming.random_model``);
each model streams the same random video, batch 1, after a warm-up, in a process of its own.
Printed: seconds and frames per second, the ratio to the single frame, parameters, and the time
the temporal aggregation takes (all levels).

    python benchmarks/fpn_inference.py --size 320 544 --frames 10 --threads 1
    python benchmarks/fpn_inference.py --synthetic --size 128 160 --threads 1
"""

import argparse
import json

import torch
from _memory import in_fresh_process
from _streaming import CallTimer, device_name, random_model, random_video, seconds_per_frame
from detectron2.config import get_cfg

from vod_d2 import add_vod_config

ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
# The README's keys: STSN on every level the heads read, one set of weights.
STSN_KEYS = [
    "MODEL.VIDEO.AGGREGATION", "STSNAggregation", "MODEL.VIDEO.TEST_WINDOW", (4, 4),
    "MODEL.STSN.CONV_DIM", 256, "MODEL.STSN.EMBED_DIMS", (128, 128, 512),
]  # fmt: skip
# name -> (config file, overrides); the first is the baseline.
# STSN without p2, which has three quarters of the positions of p2-p6.
WITHOUT_P2 = ["MODEL.VIDEO.IN_FEATURES", ["p3", "p4", "p5", "p6"]]
ZOO = {
    "single frame R50-FPN": (ZOO_CONFIG, []),
    "STSN R50-FPN (K = 4, p2-p6)": (ZOO_CONFIG, STSN_KEYS),
    "STSN R50-FPN (K = 4, p3-p6)": (ZOO_CONFIG, STSN_KEYS + WITHOUT_P2),
}
SYNTHETIC = {
    "single frame R50-FPN (synthetic widths)": ("configs/synthetic/single_frame_fpn.yaml", []),
    "STSN R50-FPN (synthetic widths, T = 3, p3-p6)": ("configs/synthetic/stsn_fpn.yaml", []),
    "STSN R50-FPN (synthetic widths, T = 3, p2-p6)": (
        "configs/synthetic/stsn_fpn.yaml",
        ["MODEL.VIDEO.IN_FEATURES", []],
    ),
}


def build_config(path, opts, device):
    cfg = get_cfg()
    add_vod_config(cfg)
    if path == ZOO_CONFIG:
        from detectron2 import model_zoo

        path = model_zoo.get_config_file(path)
        opts = ["MODEL.META_ARCHITECTURE", "VideoRCNN", "MODEL.ROI_HEADS.NUM_CLASSES", 30, *opts]
    cfg.merge_from_file(path)
    cfg.merge_from_list([*opts, "MODEL.WEIGHTS", "", "MODEL.DEVICE", device])
    return cfg


def measure(path, opts, size, frames, warmup, device, threads):
    """One model's seconds per frame (and its aggregation's), in the calling process."""
    if threads:
        torch.set_num_threads(threads)
    model = random_model(build_config(path, opts, device))
    video = random_video(frames, *size)
    seconds_per_frame(model, video[:warmup], device)
    timers = [
        CallTimer(module, "forward", device)
        for module in [model.temporal_aggregation, *model.level_aggregations.values()]
    ]
    seconds = seconds_per_frame(model, video, device)
    return {
        "config": path,
        "s_per_frame": seconds,
        "aggregation_s_per_frame": sum(t.seconds for t in timers) / len(video),
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--synthetic", action="store_true", help="configs/synthetic/*_fpn.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 544), help="frame H W")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    models = SYNTHETIC if args.synthetic else ZOO
    runs = {
        name: in_fresh_process(
            measure, path, opts, args.size, args.frames, args.warmup, args.device, args.threads
        )
        for name, (path, opts) in models.items()
    }
    threads = args.threads or torch.get_num_threads()
    print(
        f"{device_name(args.device)}, {threads} threads, a {args.frames}-frame video of "
        f"{args.size[0]}x{args.size[1]}, batch 1, streaming"
    )
    base = next(iter(runs.values()))["s_per_frame"]
    print(f"{'model':<48}{'s/frame':>9}{'fps':>8}{'ratio':>8}{'aggregation s':>15}{'params M':>10}")
    for name, run in runs.items():
        print(
            f"{name:<48}{run['s_per_frame']:>9.3f}{1 / run['s_per_frame']:>8.2f}"
            f"{run['s_per_frame'] / base:>7.2f}x{run['aggregation_s_per_frame']:>15.3f}"
            f"{run['params_M']:>10.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(args.device), "size": args.size, "runs": runs}, f)


if __name__ == "__main__":
    main()
