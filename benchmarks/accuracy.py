"""
Accuracy of the video methods on the built-in synthetic data, paired against their baselines.

Tiny models trained from scratch vary more from seed to seed than methods differ, and the papers
never start from scratch. So, as they do, every method starts from the same pretrained
single-frame detector of its head ("warm start", trained once per head and cached):

1. train the single-frame detector of each head (seed 0), once, for its ``HEADS`` iterations
   (``--pretrain-iters`` sets one number for all);
2. fine-tune every method from it for ``--iters`` iterations with the same schedule, for each
   seed, through the weight transfer where the method has one (STMN), and continue the
   single-frame detector for as many iterations as its baseline;
3. evaluate each run on ``synthetic_vid_val`` and print, per method: the per-seed VID mAP,
   mean and spread, COCO AP50/AP, and the paired difference (same seed) to its baseline.

Each run is ``train_net.py`` in its own process (``--jobs`` at a time, each with
``--threads`` torch threads). A new method joins with one line of ``METHODS``.
Finished runs are kept under ``--output``, named after their warm start and a hash of their
config and its ``_BASE_`` chain, and a rerun reuses them; a change of code is not seen, so
delete ``--output`` after one.

    python benchmarks/accuracy.py                       # every method, seeds 0 1 2
    python benchmarks/accuracy.py --methods single_frame stmn --seeds 0 1 --iters 200
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "synthetic")


@dataclass(frozen=True)
class Method:
    """A synthetic config and how it is measured."""

    head: str  # the warm start it fine-tunes from (a key of HEADS)
    baseline: Optional[str]  # the method it is paired with (same head, same seed)
    transfer: bool = False  # start through the STMN weight transfer


@dataclass(frozen=True)
class Head:
    """The single-frame detector a head's methods start from, and its warm-start length."""

    config: str
    iters: int  # Sparse R-CNN's set prediction needs longer: 15.7 mAP at 1400, 52.3 at 4000


HEADS = {
    "faster_rcnn": Head("single_frame", 1400),
    "rfcn": Head("rfcn", 1400),
    "sparse_rcnn": Head("sparse_rcnn", 4000),
}

METHODS = {
    "single_frame": Method("faster_rcnn", None),
    "ssn": Method("faster_rcnn", "single_frame"),
    "stsn": Method("faster_rcnn", "ssn"),
    "stmn": Method("faster_rcnn", "single_frame", transfer=True),
    "rfcn": Method("rfcn", None),
    "stmn_rfcn": Method("rfcn", "rfcn", transfer=True),
    "lsts": Method("rfcn", "rfcn"),
    "impression": Method("rfcn", "rfcn"),
    "dff": Method("rfcn", "rfcn"),
    "sparse_rcnn": Method("sparse_rcnn", None),
    "sparsevod": Method("sparse_rcnn", "sparse_rcnn"),
}


def _config(name: str) -> str:
    return os.path.join(CONFIGS, f"{name}.yaml")


def _digest(name: str, extra: str = "") -> str:
    """A short hash of the config ``name``, every ``_BASE_`` it inherits from, and ``extra``."""
    h = hashlib.sha1(extra.encode())
    path = _config(name)
    while path:
        with open(path, "rb") as f:
            text = f.read()
        h.update(text)
        base = re.search(rb'^_BASE_:\s*"?([^"\s]+)"?', text, re.MULTILINE)
        path = os.path.join(os.path.dirname(path), base.group(1).decode()) if base else None
    return h.hexdigest()[:10]


def _train(config: str, output: str, opts: List[str], threads: int, log: str) -> Dict:
    """Run train_net.py; return the final evaluation of ``synthetic_vid_val`` (bbox metrics)."""
    results = os.path.join(output, "final_results.json")
    if os.path.isfile(results):
        with open(results) as f:
            return json.load(f)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    command += ["OUTPUT_DIR", output, *opts]
    os.makedirs(output, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log}")
    metrics = _last_metrics(os.path.join(output, "metrics.json"))
    with open(results, "w") as f:
        json.dump(metrics, f)
    return metrics


def _last_metrics(path: str) -> Dict:
    """The evaluation that detectron2's EvalHook wrote last into metrics.json."""
    found = {}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            values = {k.split("/bbox/")[1]: v for k, v in entry.items() if "/bbox/" in k}
            if values:
                found = values
    if not found:
        raise RuntimeError(f"{path} holds no evaluation")
    return found


def _warm_start(head: str, args, log_dir: str) -> str:
    """Train (once) the single-frame detector of ``head``; return its checkpoint."""
    name = HEADS[head].config
    iters = args.pretrain_iters or HEADS[head].iters
    key = _digest(name, extra=str(iters))
    output = os.path.join(args.output, "warm_start", f"{name}-{iters}-{key}")
    steps = f"({int(iters * 0.75)},)"
    opts = ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps, "SEED", "0"]
    start = time.perf_counter()
    metrics = _train(
        _config(name), output, opts, args.threads, os.path.join(log_dir, f"{name}.log")
    )
    seconds = time.perf_counter() - start
    print(f"warm start {name}, {iters} iterations: {metrics['mAP']:.1f} mAP ({seconds:.0f} s)")
    return os.path.join(output, "model_final.pth")


def _transferred(name: str, warm: str) -> str:
    """The warm start converted for ``name`` by the STMN weight transfer (cached)."""
    target = os.path.splitext(warm)[0] + f"-to-{name}.pth"
    if not os.path.isfile(target):
        from detectron2.config import get_cfg

        from vod_d2 import add_vod_config
        from vod_d2.modeling.temporal.weight_transfer import convert_checkpoint

        cfg = get_cfg()
        add_vod_config(cfg)
        cfg.merge_from_file(_config(name))
        convert_checkpoint(cfg, warm, target)
    return target


def _base_lr(name: str) -> float:
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(_config(name))
    return cfg.SOLVER.BASE_LR


def _fine_tune_opts(args, name: str, seed: int, weights: str) -> List[str]:
    steps = f"({int(args.iters * 2 / 3)},)"
    return [
        "MODEL.WEIGHTS", weights,
        "SOLVER.MAX_ITER", str(args.iters),
        "SOLVER.STEPS", steps,
        "SOLVER.BASE_LR", str(_base_lr(name) * args.lr_scale),
        "SOLVER.WARMUP_ITERS", str(min(20, args.iters // 10)),
        "SEED", str(seed),
    ]  # fmt: skip


def _table(methods: List[str], seeds: List[int], runs: Dict) -> str:
    header = [f"s{s}" for s in seeds] + ["mean", "spread", "AP50", "AP", "vs", "paired diff"]
    rows = [["method", *header]]
    for name in methods:
        maps = np.array([runs[name, s]["mAP"] for s in seeds])
        ap50 = np.mean([runs[name, s].get("AP50", np.nan) for s in seeds])
        ap = np.mean([runs[name, s].get("AP", np.nan) for s in seeds])
        row = [name, *[f"{m:.1f}" for m in maps], f"{maps.mean():.1f}", f"{np.ptp(maps):.1f}"]
        row += [f"{ap50:.1f}", f"{ap:.1f}"]
        base = METHODS[name].baseline
        if base in methods:
            diffs = maps - np.array([runs[base, s]["mAP"] for s in seeds])
            per_seed = " ".join(f"{d:+.1f}" for d in diffs)
            row += [base, f"{diffs.mean():+.1f} ({per_seed})"]
        else:
            row += ["", ""]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--pretrain-iters", type=int, help="warm-start iterations of every head (default: HEADS)"
    )
    parser.add_argument("--iters", type=int, default=300, help="fine-tuning iterations")
    parser.add_argument(
        "--lr-scale", type=float, default=0.5, help="fine-tuning lr / the config's BASE_LR"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "accuracy"))
    parser.add_argument("--json", help="also write every run's metrics to this file")
    args = parser.parse_args()
    methods = list(dict.fromkeys(args.methods))
    missing = [m for m in methods if METHODS[m].baseline and METHODS[m].baseline not in methods]
    if missing:
        parser.error(f"add the baselines of {missing}: {[METHODS[m].baseline for m in missing]}")
    for name in methods:
        if not os.path.isfile(_config(name)):
            parser.error(f"no config {_config(name)}")
    start = time.perf_counter()
    logs = os.path.join(args.output, "logs")
    os.makedirs(logs, exist_ok=True)
    warm = {h: _warm_start(h, args, logs) for h in sorted({METHODS[m].head for m in methods})}
    inits = {m: warm[METHODS[m].head] for m in methods}
    for m in methods:
        if METHODS[m].transfer:
            inits[m] = _transferred(m, inits[m])
    tag = f"{args.iters}it-lr{args.lr_scale}x"

    def run(job):
        name, seed = job
        # Named after the warm start and the config chain: a changed config or warm start never
        # reuses an older run's results.
        start = os.path.basename(os.path.dirname(warm[METHODS[name].head]))
        run_name = f"{name}-{_digest(name, extra=os.path.basename(inits[name]))}"
        output = os.path.join(args.output, tag, start, run_name, f"seed{seed}")
        log = os.path.join(logs, f"{tag}-{name}-seed{seed}.log")
        opts = _fine_tune_opts(args, name, seed, inits[name])
        return job, _train(_config(name), output, opts, args.threads, log)

    jobs = [(m, s) for m in methods for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(pool.map(run, jobs))
    print(
        f"\nsynthetic_vid_val VID mAP (COCO AP50/AP: means), from the warm starts above, "
        f"fine-tuning {args.iters} iterations at {args.lr_scale} x each config's BASE_LR:\n"
    )
    print(_table(methods, args.seeds, runs))
    wall = time.perf_counter() - start
    print(f"\nwall time {wall:.0f} s ({args.jobs} jobs x {args.threads} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{m}/seed{s}": r for (m, s), r in runs.items()}, f, indent=2)


if __name__ == "__main__":
    main()
