import torch
from _testing import count_backbone_calls, random_video
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
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
    model = _build(tiny_cfg)
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
    for a, b in zip(single(video), baseline(video)):
        assert torch.equal(a["instances"].scores, b["instances"].scores)


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
