"""
Every method config of configs/synthetic/ trains under two processes on CPU (detectron2's
``launch``, gloo), and one checkpoint evaluates to the same numbers with one and two processes.
Methods added later join automatically: every synthetic config but the base is listed.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from vod_d2 import add_vod_config  # noqa: F401  (the configs' keys must exist)

CONFIGS = sorted(
    p for p in glob.glob("configs/synthetic/*.yaml") if not p.endswith("Base-synthetic.yaml")
)
WORKER = os.path.join(os.path.dirname(__file__), "_multiprocess_worker.py")
# The single-frame config first: its checkpoint is the one evaluated.
ORDER = sorted(CONFIGS, key=lambda p: not p.endswith("single_frame.yaml"))


@pytest.fixture(scope="module")
def two_process_run(synthetic_datasets, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    report = root / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(
        [sys.executable, WORKER, str(report), str(root), *ORDER],
        env=env,
        timeout=900,
        check=True,
    )
    with open(report) as f:
        return root, json.load(f)


def test_every_synthetic_method_config_is_listed():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"single_frame.yaml", "stsn.yaml", "stmn.yaml", "lsts.yaml"} <= names


@pytest.mark.parametrize("config", ORDER)
def test_config_trains_under_two_processes(two_process_run, config):
    _, report = two_process_run
    assert report["train"][config] == "ok", report["train"][config]


def test_one_and_two_process_evaluation_agree(two_process_run):
    root, report = two_process_run
    sys.path.insert(0, os.path.dirname(__file__))
    from _multiprocess_worker import _args, _eval_opts

    import train_net

    checkpoint = os.path.join(root, "single_frame", "model_final.pth")
    one = train_net.main(_args(ORDER[0], _eval_opts(checkpoint, str(root), "eval1")))
    one = one["synthetic_vid_val"]["bbox"]
    two = report["eval"]
    assert set(one) == set(two)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    # The detections themselves (the model is barely trained: its mAP says little), every
    # frame's, as the evaluator dumps them: the two processes' shards gather into the same set.
    dumps = [
        os.path.join(
            root, name, "inference", "synthetic_vid_val", "synthetic_vid_val_detections.json"
        )
        for name in ("eval1", "eval2")
    ]
    one, two = (json.load(open(d)) for d in dumps)
    assert len(one) > 0 and {d["image_id"] for d in one} == {d["image_id"] for d in two}
    key = lambda d: (d["image_id"], d["category_id"], d["score"], *d["bbox"])  # noqa: E731
    assert sorted(map(key, one)) == sorted(map(key, two))
