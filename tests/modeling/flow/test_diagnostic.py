"""The diagnostic flow networks ZeroFlow and SyntheticOracleFlow (modeling/flow/diagnostic.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _testing import brief_trainer, evaluate_on_synthetic, synthetic_cfg, trained_losses
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vod_d2.data import synthetic
from vod_d2.data.mapper import read_frame
from vod_d2.engine import run_on_video
from vod_d2.modeling.flow import SyntheticOracleFlow, ZeroFlow, build_flow_net, warp
from vod_d2.modeling.frames import FrameInfo, key_frame_index

REPO_ROOT = Path(__file__).resolve().parents[3]
VAL = "VID/val/SYNTHETIC_val_{:08d}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two 12-frame validation videos at 256 x 320 (objects and motions of 16 x 20 cells)."""
    root = str(tmp_path_factory.mktemp("oracle") / "synthetic")
    synthetic.generate_synthetic_dataset(
        root, num_train_videos=0, num_val_videos=2, num_det_images=0, num_frames=(12, 12),
        size=(256, 320),
    )  # fmt: skip
    return root


def _frame(root, video, t):
    """Frame t as the detector gives it to a flow network ((1, 3, H, W) BGR in [0, 255])."""
    file_name = synthetic.dataset_frame_file(root, video, t)
    image = torch.from_numpy(read_frame(file_name, "BGR").copy()).permute(2, 0, 1)
    return image.float()[None], FrameInfo(t, 12, "full", file_name, t)


def _oracle(cur_t, ref_t, root, video, flip=False):
    """The oracle's (flow, scale) from frame cur_t to ref_t, and the two frames it was given."""
    net = SyntheticOracleFlow(feature_channels=3, input_format="BGR")
    (cur, cur_info), (ref, ref_info) = (_frame(root, video, t) for t in (cur_t, ref_t))
    if flip:  # the training augmentation: every frame of the sample mirrored
        cur, ref = cur.flip(-1), ref.flip(-1)
    flow, scale = net(cur, ref, net.frame_keys([cur_info]), net.frame_keys([ref_info]))
    return flow, scale, cur, ref


@pytest.mark.parametrize("flip", [False, True])
def test_the_oracle_warps_a_frames_features_onto_a_later_frame_better_than_zero_flow(tree, flip):
    # Stride-16 "features": each 16 x 16 cell's mean colour. Warping the key frame's by the
    # oracle flow must bring them much closer to frames 1-9 than leaving them in place does
    # (measured: 0.6 of zero flow's error inside the border cells, which the warp fills from
    # outside the frame); the flow reversed, its axes swapped, or a flip not undone do worse
    # than zero flow.
    oracle = zero = 0.0
    for video in (VAL.format(0), VAL.format(1)):
        for t in range(1, 10):
            flow, scale, cur, ref = _oracle(t, 0, tree, video, flip)
            assert flow.shape == (1, 2, 16, 20) and torch.equal(scale, torch.ones(1, 3, 16, 20))
            cur_feature, ref_feature = (F.avg_pool2d(x - 128, 16) for x in (cur, ref))
            interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
            oracle += (warp(ref_feature, flow) - cur_feature)[interior].abs().mean().item()
            zero += (ref_feature - cur_feature)[interior].abs().mean().item()
    assert oracle < 0.75 * zero, (oracle, zero)


def test_the_oracle_is_the_generators_flow_averaged_over_each_cell(tree):
    video = VAL.format(1)
    flow, _, _, _ = _oracle(7, 2, tree, video)
    pixels = torch.from_numpy(synthetic.dataset_video_flow(tree, video, 7, 2))
    # Cell (y, x) = (3, 5) covers pixels 48-63 x 80-95; flow in feature cells = pixels / 16.
    expected = pixels[:, 48:64, 80:96].mean(dim=(1, 2)) / 16
    assert torch.allclose(flow[0, :, 3, 5], expected, atol=1e-6)
    assert pixels.abs().max() > 4  # the frames five apart did move
    flipped, _, _, _ = _oracle(7, 2, tree, video, flip=True)
    # Mirrored: cell x = 5 is cell 14 of the frame, its x motion reversed.
    assert torch.allclose(flipped[0, :, 3, 14], expected * torch.tensor([-1.0, 1.0]), atol=1e-6)
    same, _, _, _ = _oracle(4, 4, tree, video)
    assert torch.equal(same, torch.zeros_like(same))


def test_the_oracle_refuses_what_is_not_the_synthetic_generators_in_one_line(tree, tmp_path):
    net = SyntheticOracleFlow(feature_channels=3, input_format="BGR")
    cases = [
        (FrameInfo(3), "has none"),  # a frame without a file (a video file, a camera)
        (FrameInfo(0, None, "full", str(tmp_path / "Data/VID/val/x/000000.JPEG"), 0),
         "is not a frame of a synthetic dataset"),
        (FrameInfo(0, None, "full", str(tmp_path / "other/Data/VID/val/SYNTHETIC_val_00000000"
                                        "/000000.JPEG"), 0), "has no readable synthetic.json"),
    ]  # fmt: skip
    for frame, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            net.frame_keys([frame])
        assert "\n" not in str(error.value)
    image, info = _frame(tree, VAL.format(0), 0)
    keys = net.frame_keys([info])
    with pytest.raises(ValueError, match="must be told which synthetic frames"):
        net(image, image)
    small = F.interpolate(image, scale_factor=0.5)  # INPUT.MIN_SIZE_TEST resized the frames
    with pytest.raises(ValueError, match=r"generated size, 256x320 .*got 128x160") as error:
        net(small, small, keys, keys)
    assert "\n" not in str(error.value)


def test_zero_flow_copies_the_key_feature():
    net = ZeroFlow(feature_channels=4, input_format="BGR")
    cur, ref = torch.rand(2, 3, 40, 72) * 255, torch.rand(2, 3, 40, 72) * 255
    flow, scale = net(cur, ref)
    assert torch.equal(flow, torch.zeros(2, 2, 3, 5)) and torch.equal(scale, torch.ones(2, 4, 3, 5))
    feature = torch.randn(2, 4, 3, 5)
    assert torch.equal(net.propagate(feature, cur, ref), feature)
    assert not list(net.parameters())


def _calls(monkeypatch):
    """Record every (video, cur_t, ref_t) the oracle asks the generator for."""
    calls = []
    flow = synthetic.dataset_video_flow

    def recording(root, video, cur_t, ref_t):
        calls.append((video, cur_t, ref_t))
        return flow(root, video, cur_t, ref_t)

    monkeypatch.setattr(synthetic, "dataset_video_flow", recording)
    return calls


@pytest.mark.usefixtures("synthetic_datasets")
@pytest.mark.parametrize("method", ["dff", "impression"])
def test_the_oracle_gets_the_frames_key_frame_rcnn_streams(method, monkeypatch):
    cfg = synthetic_cfg(method, **{"MODEL.FLOW.NAME": "SyntheticOracleFlow"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    records = [r for r in DatasetCatalog.get("synthetic_vid_val") if r["video_id"] == VAL.format(1)]
    video = [
        {**r, "image": torch.from_numpy(read_frame(r["file_name"], "BGR").copy()).permute(2, 0, 1)}
        for r in records
    ]
    calls = _calls(monkeypatch)
    list(run_on_video(model, video, len(video)))
    position = cfg.MODEL.KEY_FRAME.POSITION
    keys = [key_frame_index(t, len(video), 10, position) for t in range(len(video))]
    expected = [(t, keys[t]) for t in range(len(video)) if keys[t] != t]
    if method == "impression":  # the impression, warped from key frame to key frame
        expected += list(zip(sorted(set(keys))[1:], sorted(set(keys))[:-1]))
    assert sorted(c[1:] for c in calls) == sorted(expected)
    assert {c[0] for c in calls} == {VAL.format(1)}


@pytest.mark.usefixtures("synthetic_datasets")
def test_the_oracle_gets_a_training_samples_frames_flipped_or_not(monkeypatch):
    model = build_model(synthetic_cfg("impression", **{"MODEL.FLOW.NAME": "SyntheticOracleFlow"}))
    records = [r for r in DatasetCatalog.get("synthetic_vid_val") if r["video_id"] == VAL.format(0)]

    def image(t, flip):
        frame = torch.from_numpy(read_frame(records[t]["file_name"], "BGR").copy())
        return frame.permute(2, 0, 1).flip(-1) if flip else frame.permute(2, 0, 1)

    instances = Instances((64, 80), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0]])),
                          gt_classes=torch.tensor([1]))  # fmt: skip
    # Frame 9 with its old key frame 1 and new key frame 7; the second sample flipped.
    batch = [
        dict(records[9], image=image(9, flip), support_images=[image(1, flip), image(7, flip)],
             support_offsets=[-8, -2], instances=instances)
        for flip in (False, True)
    ]  # fmt: skip
    calls = _calls(monkeypatch)
    with EventStorage():
        losses = model.train()(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    # The new key frame from the old one (the impression), the annotated frame from the new.
    assert sorted(c[1:] for c in calls) == [(7, 1), (7, 1), (9, 7), (9, 7)]


@pytest.mark.usefixtures("synthetic_datasets")
@pytest.mark.parametrize("method, flow", [("dff", "ZeroFlow"), ("dff", "SyntheticOracleFlow"),
                                          ("impression", "SyntheticOracleFlow")])  # fmt: skip
def test_dff_and_impression_train_and_evaluate_with_a_diagnostic_flow(method, flow, tmp_path):
    cfg = synthetic_cfg(method, **{"MODEL.FLOW.NAME": flow})
    trainer = brief_trainer(cfg, tmp_path)
    assert type(trainer.model.key_frames.flow_net).__name__ == flow
    trainer.train()
    assert len(trained_losses(trainer)) == 2
    assert set(evaluate_on_synthetic(cfg, trainer.model)) >= {"mAP", "AP50"}


def test_the_diagnostics_are_built_by_name_and_have_no_weights_to_load(tmp_path):
    cfg = synthetic_cfg("dff", **{"MODEL.FLOW.NAME": "ZeroFlow"})
    assert isinstance(build_flow_net(cfg, 8), ZeroFlow)
    cfg.MODEL.FLOW.WEIGHTS = str(tmp_path / "flow.pth")
    with pytest.raises(ValueError, match="ZeroFlow has no weights: MODEL.FLOW.WEIGHTS must be"):
        build_flow_net(cfg, 8)


def test_the_diagnostics_are_not_pretrained(tmp_path):
    run = subprocess.run(
        [sys.executable, "tools/pretrain_flow.py", "--config-file", "configs/synthetic/dff.yaml",
         "--output", str(tmp_path / "zero.pth"), "MODEL.FLOW.NAME", "ZeroFlow"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "tools/pretrain_flow.py: error: MODEL.FLOW.NAME ZeroFlow has no weights to train"
    )
