"""
The speed/accuracy figure: synthetic VID mAP (benchmarks/accuracy.py) against streaming frames
per second on CPU (benchmarks/speed.py --synthetic), one point per method, the bars spanning
the seeds. Regenerate it whenever a method is added::

    python benchmarks/accuracy.py --json output/accuracy/results.json
    python benchmarks/speed.py --synthetic --size 128 160 --json output/speed_synthetic.json
    python benchmarks/plot.py output/accuracy/results.json output/speed_synthetic.json \\
        --output docs/speed_accuracy.png
"""

import argparse
import json
import os
from collections import defaultdict

import numpy as np
from speed import METHODS

# accuracy.py's method names (the synthetic configs) -> speed.py's.
_SPEED_NAME = {small: method for method, (_, small) in METHODS.items()}


def _accuracy(path):
    """method -> per-seed VID mAP."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    maps = defaultdict(list)
    for key, metrics in sorted(runs.items()):
        method, _ = key.rsplit("/seed", 1)
        maps[method].append(metrics["mAP"])
    return maps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("accuracy", help="benchmarks/accuracy.py --json output")
    parser.add_argument("speed", help="benchmarks/speed.py --synthetic --json output")
    parser.add_argument("--output", default="docs/speed_accuracy.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = _accuracy(args.accuracy)
    with open(args.speed) as f:
        speed = json.load(f)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for method, values in maps.items():
        name = _SPEED_NAME.get(method)
        if name not in speed["runs"]:
            continue
        fps = speed["runs"][name]["fps"]
        values = np.asarray(values)
        low, high = values.mean() - values.min(), values.max() - values.mean()
        single = "single frame" in name or name == "Sparse R-CNN"
        ax.errorbar(
            fps, values.mean(), yerr=[[low], [high]], fmt="s" if single else "o", capsize=3,
            color="grey" if single else None,
        )  # fmt: skip
        ax.annotate(name, (fps, values.mean()), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(f"frames per second ({speed['device']}, {speed['size'][0]}x{speed['size'][1]})")
    ax.set_ylabel("VID mAP on synthetic_bench_vid_val (mean over seeds, bars: range)")
    ax.set_title("vod_d2 methods on the synthetic videos (squares: single-frame baselines)")
    ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
