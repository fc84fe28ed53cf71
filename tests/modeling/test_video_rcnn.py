import pytest
import torch
from _testing import count_backbone_calls, random_video
from detectron2.modeling import GeneralizedRCNNWithTTA, build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from vod_d2.engine import run_on_video


def _build(cfg, aggregation="WindowMeanAggregation", window=(2, 2)):
    cfg.MODEL.VIDEO.AGGREGATION = aggregation
    cfg.MODEL.VIDEO.TEST_WINDOW = window
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_backbone_runs_once_per_frame_and_every_frame_gets_one_result(tiny_cfg):
    for window in [(0, 0), (3, 3), (13, 13), (0, 4)]:
        model = _build(tiny_cfg.clone(), window=window)
        calls = count_backbone_calls(model)
        video = random_video(9, seed=1, output_scale=2)
        done = list(run_on_video(model, video))
        assert calls == [1] * 9, window
        assert [meta["frame_idx"] for meta, _ in done] == list(range(9)), window
        for meta, output in done:
            assert output["instances"].image_size == (meta["height"], meta["width"]), window


def test_video_state_does_not_leak_into_the_next_video(tiny_cfg):
    model = _build(tiny_cfg, aggregation="RunningMeanAggregation", window=(0, 0))
    alone = [o["instances"] for o in model(random_video(4, seed=2, output_scale=2))]
    model(random_video(5, seed=3, output_scale=2))
    after_other = [o["instances"] for o in model(random_video(4, seed=2, output_scale=2))]
    for a, b in zip(alone, after_other):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)


def test_window_changes_results_only_through_the_aggregation(tiny_cfg):
    single = _build(tiny_cfg.clone(), aggregation="SingleFrameAggregation", window=(2, 2))
    baseline = _build(tiny_cfg.clone(), aggregation="SingleFrameAggregation", window=(0, 0))
    video = random_video(4, seed=4, output_scale=2)
    for (_, a), (_, b) in zip(run_on_video(single, video), run_on_video(baseline, video)):
        assert torch.equal(a["instances"].scores, b["instances"].scores)


def test_baseline_keeps_detectron2s_inference_contract(tiny_cfg):
    model = _build(tiny_cfg, aggregation="SingleFrameAggregation", window=(0, 0))
    images = random_video(3, seed=6, output_scale=2)
    raw = model.inference(images, do_postprocess=False)
    assert all(isinstance(r, Instances) and r.image_size == (64, 80) for r in raw)
    # Independent images: each one's detections do not depend on the others in the batch.
    for image, result in zip(images, raw):
        (alone,) = model.inference([image], do_postprocess=False)
        torch.testing.assert_close(alone.scores, result.scores, atol=1e-4, rtol=1e-4)
    given = [Instances((64, 80), pred_boxes=r.pred_boxes, pred_classes=r.pred_classes) for r in raw]
    rescored = model.inference(images, detected_instances=given, do_postprocess=False)
    for r, g in zip(rescored, given):
        assert torch.equal(r.pred_boxes.tensor, g.pred_boxes.tensor)
    outputs = model.inference(images)
    assert all(o["instances"].image_size == (128, 160) for o in outputs)


def test_test_time_augmentation_runs_on_the_baseline(tiny_cfg):
    tiny_cfg.TEST.AUG.MIN_SIZES = (48, 64)
    tiny_cfg.TEST.AUG.MAX_SIZE = 128
    tiny_cfg.TEST.AUG.FLIP = True
    model = _build(tiny_cfg, aggregation="SingleFrameAggregation", window=(0, 0))
    tta = GeneralizedRCNNWithTTA(tiny_cfg, model)
    frame = random_video(1, seed=7)[0]
    # detectron2's TTA mapper reads the original image from "image" (CHW, format of the cfg).
    with torch.no_grad():  # as detectron2's evaluation runs it
        (output,) = tta([{"image": frame["image"], "height": 64, "width": 80}])
    assert output["instances"].image_size == (64, 80)


def test_video_models_refuse_detectron2s_single_image_options(tiny_cfg):
    model = _build(tiny_cfg, window=(1, 1))
    with pytest.raises(ValueError, match="do_postprocess"):
        model.inference(random_video(3, seed=8), do_postprocess=False)


def test_heads_receive_the_frames_image_list(tiny_cfg):
    model = _build(tiny_cfg, window=(1, 1))
    seen = []
    forward = model.roi_heads.forward

    def recording(images, features, proposals, targets=None):
        seen.append(images)
        return forward(images, features, proposals, targets)

    model.roi_heads.forward = recording
    video = random_video(3, seed=9)
    list(run_on_video(model, video))
    assert len(seen) == 3
    for frame, images in zip(video, seen):
        assert isinstance(images, ImageList) and images.image_sizes == [(64, 80)]
        expected = (frame["image"].float() - model.pixel_mean) / model.pixel_std
        torch.testing.assert_close(images.tensor[0, :, :64, :80], expected)


def _training_batch(num_support, seed=5):
    frames = random_video(2 * (1 + num_support), seed, output_scale=2)
    batch = []
    for i in range(2):
        ref, *support = frames[i * (1 + num_support) : (i + 1) * (1 + num_support)]
        instances = Instances((64, 80))
        instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 40.0, 50.0]]))
        instances.gt_classes = torch.tensor([i])
        ref.update(
            instances=instances,
            support_images=[s["image"] for s in support],
            support_offsets=list(range(1, num_support + 1)),
        )
        batch.append(ref)
    return batch


def test_training_runs_backbone_once_over_all_frames_and_backpropagates(tiny_cfg):
    model = _build(tiny_cfg).train()
    calls = count_backbone_calls(model)
    with EventStorage():
        losses = model(_training_batch(num_support=2))
    assert calls == [6]
    assert set(losses) >= {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    sum(losses.values()).backward()
    assert model.temporal_aggregation.scale.grad is not None
    assert model.temporal_aggregation.scale.grad.abs() > 0


def test_the_stateful_test_module_changes_detections_across_frames(tiny_cfg):
    """The leak test above can fail: the running mean does depend on earlier frames."""
    model = _build(tiny_cfg, aggregation="RunningMeanAggregation", window=(0, 0))
    video = random_video(3, seed=10, output_scale=2)
    streamed = [o["instances"].scores for o in model(video)]
    alone = [o["instances"].scores for o in model(video[2:])]
    assert not torch.equal(streamed[2], alone[0])
