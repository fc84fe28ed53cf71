"""
benchmarks/accuracy.py and benchmarks/gate_diagnostics.py on a user's own videos: an ImageNet
VID layout declared in a datasets file whose annotations tag occlusion only (no blur or defocus
tags), as ImageNet VID's own do.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
from _testing import REPO_ROOT, run_readme_command

from vod_d2.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic_dataset

# The tests' size (tests/_testing.synthetic_cfg), as config options of every run.
SMALL = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
CONDITION_TAG = re.compile(r"\s*<conditions>[^<]*</conditions>")


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """A datasets file declaring ``my_train`` and ``my_val``: small synthetic videos with
    their ``<conditions>`` tags removed, so that only ``<occluded>`` marks a condition."""
    folder = tmp_path_factory.mktemp("own_data")
    root = generate_synthetic_dataset(
        str(folder / "MyVID"),
        num_train_videos=2,
        num_val_videos=2,
        num_det_images=0,
        num_frames=(8, 10),
        size=(64, 80),
        profile="hard",
    )
    for xml in Path(root, "Annotations").rglob("*.xml"):
        xml.write_text(CONDITION_TAG.sub("", xml.read_text()))
    datasets = folder / "datasets.yaml"
    classes = json.dumps(list(SYNTHETIC_CLASSES))
    datasets.write_text(
        f"my_train:\n  root: MyVID\n  image_set: ImageSets/VID_train_15frames.txt\n"
        f"  class_names: {classes}\n  cache_dir: cache\n"
        f"my_val:\n  root: MyVID\n  image_set: ImageSets/VID_val_videos.txt\n"
        f"  class_names: {classes}\n  cache_dir: cache\n"
    )
    return datasets


def _run(folder, script, *args):
    """``python benchmarks/SCRIPT ARGS...`` as the README runs it, from ``folder``."""
    command = ["python", str(REPO_ROOT / "benchmarks" / script), *map(str, args)]
    result = run_readme_command(folder, shlex.join(command), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_accuracy_on_own_data_reports_the_subsets_it_has(own_data, tmp_path):
    output = tmp_path / "accuracy"
    stdout = _run(
        tmp_path, "accuracy.py", "--methods", "rfcn", "lsts", "--seeds", "0", "1", "2",
        "--warm-iters", 8, "--iters", 3, "--samples", 20,
        "--datasets-file", own_data, "--train", "my_train", "--test", "my_val",
        "--opts", *SMALL, "--output", output, "--json", tmp_path / "result.json",
    )  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())

    present = {"all", "clean", "occluded", "degraded"}
    assert present <= set(result["subsets"])
    assert not {"motion_blur", "defocus"} & set(result["subsets"])
    assert "Left out, no ground truth in my_val: motion_blur, defocus" in stdout
    assert result["subsets"]["occluded"] > 0

    header = next(line for line in stdout.splitlines() if line.startswith("pair "))
    assert header.split() == ["pair", "all", "clean", "occluded", "degraded"]
    assert "lsts vs rfcn" in stdout
    method_header = next(line for line in stdout.splitlines() if line.startswith("method "))
    assert "occluded" in method_header.split() and "motion_blur" not in method_header.split()
    for pair, subsets in result["differences"].items():
        assert {"all", "clean", "occluded", "degraded"} <= set(subsets), pair
        assert not {"motion_blur", "defocus"} & set(subsets), pair
    for run, metrics in result["runs"].items():
        assert "mAP_occluded" in metrics and "mAP_motion_blur" not in metrics, run
    assert len(result["runs"]) == 6


def test_accuracy_retrains_when_the_dataset_changes(own_data, tmp_path):
    """The runs' cache keys depend on the datasets' records: a changed annotation retrains."""
    from accuracy import Data

    from vod_d2.data import register_datasets_file

    register_datasets_file(str(own_data))
    data = Data(str(own_data), ("my_train",), "my_val", ())
    before = data.key()
    assert Data(str(own_data), ("my_train",), "my_val", ("SEED", "1")).key() != before
    xml = next(
        path
        for path in sorted(Path(own_data.parent, "MyVID", "Annotations", "VID").rglob("*.xml"))
        if "<occluded>0</occluded>" in path.read_text()
    )
    original = xml.read_text()
    try:
        xml.write_text(original.replace("<occluded>0</occluded>", "<occluded>1</occluded>", 1))
        assert data.key() != before
    finally:
        xml.write_text(original)
    assert data.key() == before


def test_gate_diagnostics_on_a_dataset_declared_in_a_datasets_file(own_data, tmp_path):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from vod_d2.engine import load_config

    config = str(REPO_ROOT / "configs" / "synthetic" / "stmn_rfcn.yaml")
    cfg = load_config(config, SMALL)
    weights = tmp_path / "model_final.pth"
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model_final")
    stdout = _run(
        tmp_path, "gate_diagnostics.py", "--gammas", 0, 1, "--config-file", config,
        "DATASETS.FILE", own_data, "DATASETS.TEST", '("my_val",)', "MODEL.WEIGHTS", weights,
        *SMALL,
    )  # fmt: skip
    header = next(line for line in stdout.splitlines() if line.startswith("gates  "))
    assert "mAP_occluded" in header.split() and "mAP_motion_blur" not in header.split()
    assert any(line.startswith("gamma=1") for line in stdout.splitlines())
