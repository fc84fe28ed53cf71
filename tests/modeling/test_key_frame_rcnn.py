"""KeyFrameRCNN with LSTS, Impression Network and DFF: schedules, call counts, state, training."""

import math

import pytest
import torch
from _testing import (
    brief_trainer,
    evaluate_on_synthetic,
    random_video,
    synthetic_cfg,
    trained_losses,
)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vod_d2.engine import VideoTrainer, run_on_video
from vod_d2.modeling import KeyFrameRCNN
from vod_d2.modeling.frames import key_frame_index
from vod_d2.modeling.temporal.impression import TABLE1_VARIANTS

METHODS = ("lsts", "impression", "dff")


def _build(cfg):
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _count(module, name):
    """Wrap ``module.name``; returns the list of the batch sizes it was called with."""
    calls = []
    method = getattr(module, name)

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return method(x, *args, **kwargs)

    setattr(module, name, counting)
    return calls


def test_key_frame_schedules_of_a_35_frame_video():
    first = [key_frame_index(t, 35, 10, "first") for t in range(35)]
    center = [key_frame_index(t, 35, 10, "center") for t in range(35)]
    assert sorted(set(first)) == [0, 10, 20, 30]
    # Central frames of 0-9, 10-19, 20-29 and of the short last segment 30-34.
    assert sorted(set(center)) == [4, 14, 24, 32]
    assert all(abs(t - k) <= 5 for t, k in enumerate(center))


def test_lsts_runs_the_heavy_path_on_4_of_35_frames_and_each_part_once_per_frame():
    model = _build(synthetic_cfg("lsts"))
    light = _count(model.backbone, "forward_light")
    rest = _count(model.backbone, "forward_rest")
    non_key = _count(model.key_frames, "non_key_frame")
    done = list(run_on_video(model, random_video(35, seed=1), 35))
    assert [m["frame_idx"] for m, _ in done] == list(range(35))
    assert len(rest) == 4  # key frames 0, 10, 20, 30
    assert len(light) == 35  # the light part of every frame, key frames' included
    assert len(non_key) == 31


def test_impression_runs_n_feat_on_4_central_key_frames_and_the_flow_net_per_frame():
    model = _build(synthetic_cfg("impression"))
    n_feat = _count(model.backbone, "forward")
    flow = _count(model.key_frames.flow_net, "forward")
    video = random_video(35, seed=2)
    model.reset(35)
    waited = []
    for t, frame in enumerate(video):
        for meta, _ in model.step(frame):
            waited.append(t - meta["frame_idx"])
    model.flush()
    assert len(n_feat) == 4  # frames 4, 14, 24, 32
    # Once per non-key frame (31), plus once per key frame after the first (the impression).
    assert len(flow) == 31 + 3
    # A frame waits for its segment's central key frame (frame 4 of 0-9), never longer.
    assert max(waited) == 4 and min(waited) == 0


def test_dff_is_online_and_runs_no_impression_flow():
    model = _build(synthetic_cfg("dff"))
    flow = _count(model.key_frames.flow_net, "forward")
    model.reset(None)
    for frame in random_video(12, seed=3):
        assert len(model.step(frame)) == 1  # every frame comes out as it arrives
    assert len(flow) == 12 - 2  # the non-key frames only


@pytest.mark.parametrize("method", METHODS)
def test_memory_does_not_leak_into_the_next_video(method):
    model = _build(synthetic_cfg(method))
    # Random weights give low scores: keep every detection.
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    first = [o["instances"] for _, o in run_on_video(model, random_video(14, seed=4), 14)]
    list(run_on_video(model, random_video(17, seed=5), 17))
    again = [o["instances"] for _, o in run_on_video(model, random_video(14, seed=4), 14)]
    assert sum(len(x) for x in first) > 0
    for a, b in zip(first, again):
        assert torch.equal(a.scores, b.scores) and torch.equal(
            a.pred_boxes.tensor, b.pred_boxes.tensor
        )


def test_the_memory_carries_across_segments():
    """The leak test can fail: a later segment's detections depend on earlier key frames."""
    # Randomly initialised (no residual gate): the memory weighs from the first key frame on.
    model = _build(synthetic_cfg("lsts", **{"MODEL.VIDEO.IDENTITY_INIT": False}))
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    video = random_video(25, seed=6)
    whole = [o["instances"].scores for _, o in run_on_video(model, video, 25)]
    tail = [o["instances"].scores for _, o in run_on_video(model, video[10:], 15)]
    assert not torch.equal(whole[10], tail[0])


def _triplets(model, offsets, seed=7):
    frames = random_video(3 * len(offsets), seed)
    batch = []
    for i, pair in enumerate(offsets):
        cur, old, new = frames[3 * i : 3 * i + 3]
        instances = Instances((64, 80))
        instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 40.0, 50.0]]))
        instances.gt_classes = torch.tensor([i % 5])
        support = [old["image"], cur["image"] if pair[1] == 0 else new["image"]]
        batch.append(
            dict(cur, instances=instances, support_images=support, support_offsets=list(pair))
        )
    return batch


@pytest.mark.parametrize("method", METHODS)
def test_training_reaches_every_parameter_through_one_graph(method):
    model = _build(synthetic_cfg(method)).train()
    n_feat = _count(model.backbone, "forward_rest" if method == "lsts" else "forward")
    # An ordinary triplet, an annotated frame that is its own new key frame, a DET image.
    with EventStorage():
        losses = model(_triplets(model, [(-8, -2), (-7, 0), (0, 0)]))
    total = sum(losses.values())
    assert math.isfinite(total.item())
    total.backward()
    assert n_feat == [6]  # the heavy network once, over the 2 key frames of each sample
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for name, p in model.named_parameters():
        if name not in frozen:
            assert p.grad is not None, name


def test_an_annotated_frame_that_is_its_own_new_key_frame_reads_the_keys_task_feature():
    model = _build(synthetic_cfg("impression")).train()
    model.key_frames.propagate = lambda target, key: torch.zeros_like(key["task"])
    seen = []
    forward = model.proposal_generator.forward

    def recording(images, features, gt_instances=None):
        seen.append(features["res5_reduced"])
        return forward(images, features, gt_instances)

    model.proposal_generator.forward = recording
    with EventStorage():
        model(_triplets(model, [(-8, -2), (-7, 0)]))
    (features,) = seen
    assert features[0].abs().sum() == 0 and features[1].abs().sum() > 0


def test_lsts_locations_learn_with_their_own_learning_rate():
    cfg = synthetic_cfg("lsts")
    model = _build(cfg)
    optimizer = VideoTrainer.build_optimizer(cfg, model)
    rates = {
        id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]
    }
    locations = model.key_frames.fusion.sampling.offsets
    assert rates[id(locations)] == (cfg.SOLVER.BASE_LR * cfg.MODEL.LSTS.LOCATIONS_LR_MULT, 0.0)
    before = locations.detach().clone()
    model.train()
    for _ in range(3):
        with EventStorage():
            losses = model(_triplets(model, [(-8, -2), (-9, -4)]))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert locations.grad is not None and locations.grad.abs().sum() > 0
    assert not torch.equal(locations.detach(), before)


def test_key_frame_configs_refuse_a_wrong_setup():
    cfg = synthetic_cfg("lsts", **{"MODEL.BACKBONE.NAME": "build_rfcn_resnet_backbone"})
    with pytest.raises(ValueError, match="must split the ResNet"):
        build_model(cfg)
    cfg = synthetic_cfg("impression", **{"MODEL.KEY_FRAME.POSITION": "middle"})
    with pytest.raises(ValueError, match="MODEL.KEY_FRAME.POSITION"):
        build_model(cfg)
    model = _build(synthetic_cfg("impression")).train()
    batch = _triplets(model, [(-8, -2)])
    batch[0]["support_images"] = batch[0]["support_images"][:1]
    with pytest.raises(ValueError, match="key_frame"):
        model(batch)


def test_impression_per_frame_ablation_makes_every_frame_a_key_frame():
    cfg = synthetic_cfg("impression", **{"MODEL.IMPRESSION.SPARSE_FEATURE": False})
    cfg.MODEL.IMPRESSION.MEMORY = False
    cfg.MODEL.IMPRESSION.QUALITY_AWARE = False
    model = _build(cfg)
    n_feat = _count(model.backbone, "forward")
    list(run_on_video(model, random_video(7, seed=8), 7))
    assert isinstance(model, KeyFrameRCNN) and n_feat == [1] * 7


@pytest.mark.usefixtures("synthetic_datasets")
@pytest.mark.parametrize("method", METHODS)
def test_synthetic_configs_train_and_evaluate_on_cpu(method, tmp_path):
    cfg = synthetic_cfg(method)
    trainer = brief_trainer(cfg, tmp_path)
    trainer.train()
    assert len(trained_losses(trainer)) == 2
    assert set(evaluate_on_synthetic(cfg, trainer.model)) >= {"mAP", "AP50"}


@pytest.mark.parametrize("row", sorted(TABLE1_VARIANTS))
def test_impression_table1_rows_build_and_train_a_step(row):
    cfg = synthetic_cfg("impression")
    for key, value in TABLE1_VARIANTS[row].items():
        cfg.MODEL.IMPRESSION[key] = value
    model = _build(cfg).train()
    with EventStorage():
        losses = model(_triplets(model, [(-8, -2), (0, 0)]))
    sum(losses.values()).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("roi_heads.") for n in trained), row
    # (e): the feature network and the flow net stay as loaded; (a)-(d) train end to end.
    learns_features = TABLE1_VARIANTS[row]["END_TO_END"]
    assert any(n.startswith("backbone.") for n in trained) == learns_features, row
    flow_trained = any(n.startswith("key_frames.flow_net.") for n in trained)
    uses_flow = TABLE1_VARIANTS[row]["SPARSE_FEATURE"] or TABLE1_VARIANTS[row]["MEMORY"]
    assert flow_trained == (learns_features and uses_flow), row


@pytest.mark.parametrize(
    "switches",
    [
        {"MEMORY_UPDATE": "none", "NON_KEY_AGGREGATION": "none"},  # Table 2 (a)
        {"MEMORY_UPDATE": "fixed", "NON_KEY_AGGREGATION": "none"},  # (b)
        {"MEMORY_UPDATE": "quality", "NON_KEY_AGGREGATION": "fixed"},  # (e)
        {"INIT": "grid", "NUM_POINTS": 9},  # Table 4, uniform initialisation
        {"LEARN_LOCATIONS": False},  # Table 4, fixed locations
    ],
)
def test_lsts_ablation_switches_build_and_train_a_step(switches):
    cfg = synthetic_cfg("lsts")
    for key, value in switches.items():
        cfg.MODEL.LSTS[key] = value
    model = _build(cfg).train()
    with EventStorage():
        losses = model(_triplets(model, [(-8, -2), (-9, -4)]))
    sum(losses.values()).backward()
    locations = model.key_frames.fusion.sampling.offsets
    assert (locations.grad is not None) == switches.get("LEARN_LOCATIONS", True)
