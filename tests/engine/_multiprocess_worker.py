"""
Run by ``test_multiprocess.py`` in a subprocess (so that a hang is a timeout, not a stuck CI):
train each given config for a few iterations through ``train_net.py``'s ``main`` under two
processes (detectron2's ``launch``; gloo on CPU), then evaluate one checkpoint with two
processes, and write a JSON report::

    python tests/engine/_multiprocess_worker.py REPORT OUTPUT_DIR CONFIG [CONFIG ...]
"""

import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# Every config at the tests' size: 64-px frames, few proposals, one image per process.
OPTS = [
    "SOLVER.MAX_ITER", "3",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MIN_SIZE_TEST", "64",
    "DATASETS.TEST", "()",
    "MODEL.DEVICE", "cpu",
]  # fmt: skip


def _args(config, opts):
    from detectron2.engine import default_argument_parser

    return default_argument_parser().parse_args(["--config-file", config, *opts])


def _run(report, output, configs):
    import torch
    from detectron2.utils import comm

    import train_net

    torch.set_num_threads(1)
    results = {}
    for config in configs:
        name = os.path.splitext(os.path.basename(config))[0]
        try:
            train_net.main(_args(config, [*OPTS, "OUTPUT_DIR", os.path.join(output, name)]))
            results[config] = "ok"
        except Exception:  # recorded: each config gets its own verdict
            results[config] = traceback.format_exc()
        comm.synchronize()
    checkpoint = os.path.join(output, "single_frame", "model_final.pth")
    evaluation = train_net.main(_args(configs[0], _eval_opts(checkpoint, output, "eval2")))
    if comm.is_main_process():
        with open(report, "w") as f:
            json.dump({"train": results, "eval": evaluation["synthetic_vid_val"]["bbox"]}, f)


def _eval_opts(checkpoint, output, name):
    """``--eval-only`` of ``checkpoint`` on synthetic_vid_val, keeping every detection."""
    return [
        "--eval-only",
        "MODEL.WEIGHTS", checkpoint,
        "MODEL.DEVICE", "cpu",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "INPUT.MIN_SIZE_TEST", "64",
        "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TEST", "('synthetic_vid_val',)",
        "TEST.VID_EVAL.COCO_METRICS", "False",
        "OUTPUT_DIR", os.path.join(output, name),
    ]  # fmt: skip


def main():
    from detectron2.engine import launch

    report, output, *configs = sys.argv[1:]
    launch(_run, 2, dist_url="auto", args=(report, output, configs))


if __name__ == "__main__":
    main()
