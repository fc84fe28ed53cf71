"""
Run by ``test_video_rcnn_fpn.py`` in a subprocess (so that a crash or a hang fails the test, not
the session): under two processes (detectron2's ``launch``; gloo on CPU), train every given
temporal aggregation on the model zoo's R50-FPN config for a few iterations through
``train_net.py``'s ``main``, which then evaluates it, and write a JSON report::

    python tests/modeling/_fpn_worker.py REPORT OUTPUT_DIR AGGREGATION [AGGREGATION ...]

A user's aggregation is imported by every process from ``$FPN_WORKER_IMPORT`` (a module name on
the ``PYTHONPATH``), as the README's ``train_my_method.py`` does.
"""

import importlib
import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
if os.environ.get("FPN_WORKER_IMPORT"):
    importlib.import_module(os.environ["FPN_WORKER_IMPORT"])


def _run(report, output, aggregations):
    import torch
    from _testing import FPN_AGGREGATIONS, TINY_FPN, ZOO_CONFIG
    from detectron2.engine import default_argument_parser
    from detectron2.utils import comm

    import train_net

    torch.set_num_threads(1)
    results = {}
    for name in aggregations:
        opts = [
            "MODEL.META_ARCHITECTURE", "VideoRCNN", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
            "MODEL.ROI_HEADS.NUM_CLASSES", "5", *TINY_FPN, "MODEL.VIDEO.AGGREGATION", name,
            *FPN_AGGREGATIONS[name], "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.WARMUP_ITERS", "1", "DATASETS.TEST", "('synthetic_vid_val',)",
            "OUTPUT_DIR", os.path.join(output, name),
        ]  # fmt: skip
        config = train_net.resolve_config_file(ZOO_CONFIG)
        args = default_argument_parser().parse_args(["--config-file", config, *opts])
        try:
            train_net.main(args)  # evaluates DATASETS.TEST at the end (its log says so)
            results[name] = f"ok, world size {comm.get_world_size()}"
        except Exception:  # recorded: each aggregation gets its own verdict
            results[name] = traceback.format_exc()
        comm.synchronize()
    if comm.is_main_process():
        with open(report, "w") as f:
            json.dump(results, f)


def main():
    from detectron2.engine import launch

    report, output, *aggregations = sys.argv[1:]
    launch(_run, 2, dist_url="auto", args=(report, output, aggregations))


if __name__ == "__main__":
    main()
