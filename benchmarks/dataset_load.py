"""
Load time and memory of the ImageNet VID loader on a generated tree the size of the val set.

Writes, in a temporary folder, the XML annotations of 176,126 frames in 555 snippets (1-3
objects per frame, no images) and a ``VID_val_videos.txt`` list, then measures, each in a
fresh process so that no measurement inherits another's memory:

* first load: parse every XML file (all cores) and write the cache;
* cached load: the same call again, served from the cache;
* memory: RSS growth over each load (records kept), and tracemalloc's peak and retained
  Python allocations of a cached load.

Usage::

    python benchmarks/dataset_load.py [--frames 176126 --videos 555 --workers N --keep DIR]
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

IMAGE_SET = "ImageSets/VID_val_videos.txt"
WNIDS = ("n02691156", "n02958343", "n02084071", "n01503061", "n02391049")  # a few VID classes


def generate_tree(root: str, num_frames: int, num_videos: int, seed: int = 0) -> None:
    """ILSVRC2015 val annotations of ``num_frames`` frames in ``num_videos`` snippets."""
    rng = np.random.default_rng(seed)
    # Snippet lengths vary a lot in ImageNet VID; at least 6 frames each.
    weights = rng.lognormal(0.0, 0.8, num_videos)
    lengths = 6 + np.floor(weights / weights.sum() * (num_frames - 6 * num_videos)).astype(int)
    lengths[: num_frames - lengths.sum()] += 1
    lines = []
    for v, length in enumerate(lengths):
        snippet = f"val/ILSVRC2015_val_{v:08d}"
        folder = os.path.join(root, "Annotations", "VID", snippet)
        os.makedirs(folder)
        num_objects = rng.integers(1, 4)
        classes = rng.integers(len(WNIDS), size=num_objects)
        boxes = rng.integers(0, 600, (length, num_objects, 2))
        for t in range(length):
            objects = "".join(
                f"\t<object>\n\t\t<trackid>{k}</trackid>\n\t\t<name>{WNIDS[classes[k]]}</name>\n"
                f"\t\t<bndbox>\n\t\t\t<xmax>{x + 120}</xmax>\n\t\t\t<xmin>{x}</xmin>\n"
                f"\t\t\t<ymax>{y + 90}</ymax>\n\t\t\t<ymin>{y}</ymin>\n\t\t</bndbox>\n"
                f"\t\t<occluded>{int(t % 7 == 0)}</occluded>\n\t\t<generated>0</generated>\n"
                "\t</object>\n"
                for k, (x, y) in enumerate(boxes[t])
            )
            with open(os.path.join(folder, f"{t:06d}.xml"), "w") as f:
                f.write(
                    f"<annotation>\n\t<folder>ILSVRC2015_val_{v:08d}</folder>\n"
                    f"\t<filename>{t:06d}</filename>\n\t<source>\n\t\t<database>ILSVRC_2015"
                    "</database>\n\t</source>\n\t<size>\n\t\t<width>1280</width>\n"
                    f"\t\t<height>720</height>\n\t</size>\n{objects}</annotation>\n"
                )
            lines.append(f"{snippet} {len(lines) + 1} {t} {length}\n")
    os.makedirs(os.path.join(root, "ImageSets"))
    with open(os.path.join(root, IMAGE_SET), "w") as f:
        f.writelines(lines)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(root: str, cache_dir: str, workers: int, trace: bool) -> dict:
    """One load in this process: seconds, RSS growth, and (``trace``) tracemalloc numbers."""
    from vod_d2.data.datasets import load_imagenet_vid

    gc.collect()
    rss = _rss_bytes()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    records = load_imagenet_vid(  # the generated tree has annotations only, no frames
        root, IMAGE_SET, cache_dir=cache_dir, num_workers=workers, check_frames=False
    )
    result = {"seconds": time.perf_counter() - start, "frames": len(records)}
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        result.update(traced_retained_mb=current / 2**20, traced_peak_mb=peak / 2**20)
    result["rss_delta_mb"] = (_rss_bytes() - rss) / 2**20
    result["objects"] = sum(len(r["annotations"]) for r in records)
    return result


def _run(root, cache_dir, workers, trace=False) -> dict:
    command = [sys.executable, __file__, "--measure", root, "--cache-dir", cache_dir]
    command += ["--workers", str(workers)] + (["--trace"] if trace else [])
    # The checkout this script belongs to, whether or not vod_d2 is installed.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=176126)
    parser.add_argument("--videos", type=int, default=555)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--keep", help="generate (or reuse) the tree here instead of a temp dir")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.cache_dir, args.workers, args.trace)))
        return

    work = args.keep or tempfile.mkdtemp(prefix="vod_d2_dataset_load-")
    root = os.path.join(work, "ILSVRC2015")
    cache_dir = tempfile.mkdtemp(prefix="vod_d2_cache-")
    try:
        if not os.path.exists(root):
            start = time.perf_counter()
            generate_tree(root, args.frames, args.videos)
            print(f"generated {args.frames} frames / {args.videos} snippets in "
                  f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        first = _run(root, cache_dir, args.workers)
        cached = _run(root, cache_dir, args.workers)
        traced = _run(root, cache_dir, args.workers, trace=True)
        print(f"{first['frames']} frames, {first['objects']} objects, {args.workers} workers")
        print(f"first load : {first['seconds']:6.2f} s   RSS +{first['rss_delta_mb']:.0f} MiB")
        print(f"cached load: {cached['seconds']:6.2f} s   RSS +{cached['rss_delta_mb']:.0f} MiB")
        print(
            f"cached load under tracemalloc: peak {traced['traced_peak_mb']:.0f} MiB, records "
            f"retain {traced['traced_retained_mb']:.0f} MiB "
            f"({traced['traced_retained_mb'] * 2**20 / traced['frames']:.0f} B/frame)"
        )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
