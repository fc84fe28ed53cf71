"""Flow pretraining on synthetic pairs (vod_d2.modeling.flow.pretrain, tools/pretrain_flow.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from torchvision.models.optical_flow import raft_small

import vod_d2.modeling.flow.pretrain as pretrain
from vod_d2 import add_vod_config
from vod_d2.data import synthetic
from vod_d2.modeling.flow import build_flow_net
from vod_d2.modeling.flow.base import FlowNetwork

REPO_ROOT = Path(__file__).resolve().parents[3]
SIZE = (64, 80)
# The commands' tiny networks run faster on one thread than on busy cores' two.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _flownet(seed=0):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR = 8
    torch.manual_seed(seed)
    return build_flow_net(cfg, 4)


class _Oracle(FlowNetwork):
    """Returns a fixed flow: the ground truth of the pairs it is given, at the feature stride."""

    def __init__(self, flow):
        super().__init__(4, "BGR")
        self.flow = flow

    def forward(self, cur_images, ref_images):
        return self.flow, torch.ones(len(cur_images), 4, *self.flow.shape[-2:])


def test_the_reported_error_is_the_end_point_error_of_the_flow_the_detector_warps_with():
    # The ground truth's own stride-16 flow has EPE 0, and zero flow's EPE is its mean length.
    pairs = list(pretrain.flow_pairs(pretrain._HELD_BACK_SEED, 0, 3, SIZE, "BGR"))
    target = pretrain.feature_flow(torch.stack([flow for _, _, flow in pairs]))
    assert target.shape == (3, 2, 4, 5)
    epe, zero = pretrain.evaluate_epe(_Oracle(target), 3, SIZE, "BGR")
    assert epe < 1e-6 and abs(zero - target.norm(dim=1).mean().item()) < 1e-6 and zero > 0.05


def test_a_tiny_run_lowers_the_end_point_error(monkeypatch):
    # Four pairs, drawn again and again: the whole pipeline (pairs, multi-scale loss, Adam and
    # its schedule, the backgrounds-first data schedule) must bring their EPE well below zero
    # flow's in 160 steps.
    def four_pairs(seed, index):
        return synthetic.flow_pair_rng(seed, index % 4)

    monkeypatch.setattr(pretrain, "flow_pair_rng", four_pairs)
    monkeypatch.setattr(pretrain, "_HELD_BACK_SEED", 0)
    flow_net = _flownet()
    before, zero = pretrain.evaluate_epe(flow_net, 4, SIZE, "BGR")
    assert before == zero  # FlowNet-S's predictions start at zero
    result = pretrain.pretrain_flow(
        flow_net, iterations=160, size=SIZE, batch_size=4, held_back=4, log_period=40
    )
    assert result.zero_epe == zero and result.epe < 0.6 * zero, (result.epe, zero)
    # The logged EPE falls on backgrounds (steps 1-64), then on whole scenes (65-160).
    assert len(result.losses) == 4 and result.losses[3] < result.losses[2]


def test_the_command_writes_weights_that_model_flow_weights_loads(tmp_path):
    output = tmp_path / "flow.pth"
    run = subprocess.run(
        [sys.executable, "tools/pretrain_flow.py", "--config-file",
         "configs/synthetic/impression.yaml", "--output", str(output), "--iters", "2",
         "--batch-size", "2", "INPUT.MIN_SIZE_TEST", "64"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=ONE_THREAD,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "held-back end-point error" in run.stdout and output.is_file()
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/impression.yaml")
    cfg.MODEL.FLOW.WEIGHTS = str(output)
    loaded = build_flow_net(cfg, 8)
    saved = torch.load(output, weights_only=True)
    assert set(saved["synthetic_pretraining"]) == {"epe", "zero_epe", "curve"}
    assert torch.equal(loaded.conv1.weight, saved["state_dict"]["conv1.0.weight"])
    assert loaded.loaded_weights == str(output)
    missing = subprocess.run(
        [sys.executable, "tools/pretrain_flow.py", "--config-file", "nope.yaml", "--output",
         str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, env=ONE_THREAD,
    )  # fmt: skip
    assert missing.returncode != 0 and "config file nope.yaml does not exist" in missing.stderr


def test_the_curve_starts_at_the_loaded_weights_and_is_written_next_to_them(tmp_path):
    # Fine-tuning RAFT-small: the command starts from MODEL.FLOW.WEIGHTS (a random network
    # here), so the curve's step 0 is that network's held-back EPE; a point every 2 steps.
    torch.manual_seed(3)
    start = tmp_path / "raft_start.pth"
    torch.save(raft_small(weights=None).state_dict(), start)
    opts = ["MODEL.FLOW.NAME", "RAFTSmall", "MODEL.FLOW.RAFT.NUM_FLOW_UPDATES", "2",
            "MODEL.FLOW.WEIGHTS", str(start), "INPUT.MIN_SIZE_TEST", "64"]  # fmt: skip
    output = tmp_path / "raft.pth"
    run = subprocess.run(
        [sys.executable, "tools/pretrain_flow.py", "--config-file", "configs/synthetic/dff.yaml",
         "--output", str(output), "--iters", "3", "--batch-size", "2", "--lr", "1e-4",
         "--background-first", "0", "--clip-grad", "1", "--eval-period", "2", "--eval-pairs",
         "3", "--held-back", "3", *opts],
        cwd=REPO_ROOT, capture_output=True, text=True, env=ONE_THREAD,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    curve = json.loads((tmp_path / "raft.pth.curve.json").read_text())
    assert [point["step"] for point in curve] == [0, 2, 3]
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/dff.yaml")
    cfg.merge_from_list(opts)
    started = build_flow_net(cfg, 4)
    epe, zero = pretrain.evaluate_epe(started, 3, SIZE, "BGR")
    background, _ = pretrain.evaluate_epe(started, 3, SIZE, "BGR", objects=False)
    assert curve[0]["epe"] == pytest.approx(epe, rel=1e-5) and curve[0]["zero_epe"] == zero
    assert curve[0]["background_epe"] == pytest.approx(background, rel=1e-5)
    assert curve[-1]["epe"] != curve[0]["epe"]  # it trained
    saved = torch.load(output, weights_only=True)
    assert saved["synthetic_pretraining"]["curve"] == curve
    cfg.MODEL.FLOW.WEIGHTS = str(output)
    assert build_flow_net(cfg, 4).loaded_weights == str(output)
    assert "step  EPE (cells)" in run.stdout
