"""tools/weight_transfer.py: the command line of the STMN weight transfer."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vod_d2 import add_vod_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location(
    "weight_transfer_tool", REPO_ROOT / "tools" / "weight_transfer.py"
)
tool = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tool)

STMN = "configs/synthetic/stmn.yaml"


@pytest.fixture(scope="module")
def single_frame_checkpoint(tmp_path_factory):
    """A checkpoint of the shipped configs/synthetic/single_frame.yaml, as train_net.py writes."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/single_frame.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("checkpoints") / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 599}, path)
    return str(path), model.state_dict()


def test_the_shipped_single_frame_checkpoint_converts(single_frame_checkpoint, tmp_path):
    path, source = single_frame_checkpoint
    output = tmp_path / "new" / "folder" / "stmn.pth"  # its folder is created
    report = tool.main(["--config-file", STMN, "--input", path, "--output", str(output)])
    state = torch.load(output, weights_only=True)["model"]
    backbone = [k for k in source if k.startswith("backbone.")]
    assert backbone and set(backbone) <= set(report.copied)
    for key in backbone:
        assert torch.equal(state[key], source[key]), key
    # No feature_conv in a plain checkpoint: W_z, W_r, W start as the identity.
    assert report.converted
    weight = state["temporal_aggregation.forward_memory.cell.input_conv.weight"]
    identity = weight[:256, :, weight.shape[2] // 2, weight.shape[3] // 2]
    assert torch.equal(identity, torch.eye(256))
    # Memories of another width: the one-line explanation of what to pass.
    with pytest.raises(KeyError, match="--source-conv ''"):
        tool.main(
            ["--config-file", STMN, "--input", path, "--output", str(tmp_path / "b.pth")]
            + ["MODEL.STMN.MEMORY_CHANNELS", "8"]
        )


def test_bad_inputs_and_outputs_fail_before_the_work(single_frame_checkpoint, tmp_path):
    path, _ = single_frame_checkpoint
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    cases = [
        (
            ["--input", str(text), "--output", str(tmp_path / "a.pth")],
            "is not a PyTorch checkpoint",
        ),
        (
            ["--input", str(tmp_path / "x.pth"), "--output", str(tmp_path / "a.pth")],
            "does not exist",
        ),
        (["--input", path, "--output", str(tmp_path)], "is a folder; give the .pth file"),
    ]
    blocker = tmp_path / "a_file"
    blocker.touch()
    cases.append(
        (["--input", path, "--output", str(blocker / "a.pth")], "cannot create its folder")
    )
    for args, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            tool.main(["--config-file", STMN, *args])
    assert sorted(os.listdir(tmp_path)) == ["a_file", "notes.pth"]


def test_command_line_help_and_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "tools/weight_transfer.py", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    # The whole explanation, not the first paragraph only.
    assert "STMNSingleFrameAggregation" in run.stdout and "widened" in run.stdout
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    run = subprocess.run(
        [sys.executable, "tools/weight_transfer.py", "--config-file", STMN]
        + ["--input", str(text), "--output", str(tmp_path / "a.pth")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith(f"weight_transfer.py: error: --input {text} is not a PyTorch checkpoint")
    )


def test_a_checkpoint_for_another_class_count_is_one_line(tmp_path):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/single_frame.yaml")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    path = tmp_path / "three.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    argv = ["--config-file", STMN, "--input", str(path), "--output", str(tmp_path / "stmn.pth")]
    with pytest.raises(ValueError) as raised:
        tool.main(argv)
    assert str(raised.value) == (
        f"--input {path} was trained for 3 classes but MODEL.ROI_HEADS.NUM_CLASSES is 5, so its "
        "class and box predictors (roi_heads.box_predictor.cls_score, "
        "roi_heads.box_predictor.bbox_pred) do not fit: set MODEL.ROI_HEADS.NUM_CLASSES 3"
    )
    assert not (tmp_path / "stmn.pth").exists()
    report = tool.main(argv + ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert not any(key.startswith("roi_heads.box_predictor.") for key in report.kept_init)
