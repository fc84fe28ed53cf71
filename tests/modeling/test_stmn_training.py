"""
STMN training: the loss on every frame of the training sequence (§3.1) with the support frames'
annotations from the mapper, and every parameter in every iteration (one-frame sequences).
"""

import logging

import numpy as np
import pytest
import torch
from _testing import random_video, seeded_model, stmn_cfg
from detectron2.data import get_detection_dataset_dicts
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage

from vod_d2.data import build_frame_table
from vod_d2.data.mapper import AnnotationTable, VideoDatasetMapper
from vod_d2.modeling.temporal.stmn import STMNAggregation


def _cfg(tiny_cfg, **stmn):
    return stmn_cfg(tiny_cfg, train_offsets=(-2, -1, 1, 2), **stmn)


def _instances(label):
    instances = Instances((64, 80))
    instances.gt_boxes = Boxes(torch.tensor([[10.0 + label, 12.0, 40.0, 50.0]]))
    instances.gt_classes = torch.tensor([label % 5])
    return instances


def _sample(frames, t, offsets, labels, video_length=None):
    """Frame t of ``frames`` with support ``offsets``; ``labels`` per support frame (None: no
    record); the reference has label 0 and support frame j's box is shifted by its label."""
    support = [frames[t + o]["image"] for o in offsets]
    return dict(
        frames[t],
        video_length=video_length or len(frames),
        instances=_instances(0),
        support_images=support,
        support_offsets=list(offsets),
        support_instances=[None if label is None else _instances(label) for label in labels],
    )


def _heads_inputs(model):
    """Record the images and targets the RPN is given in each call."""
    calls = []
    forward = model.proposal_generator.forward

    def recording(images, features, gt_instances=None):
        calls.append((len(images), [x.gt_boxes.tensor[0, 0].item() - 10 for x in gt_instances]))
        return forward(images, features, gt_instances)

    model.proposal_generator.forward = recording
    return calls


def _losses(model, batch):
    with EventStorage():
        return model(batch)


def test_per_frame_loss_puts_the_heads_on_every_annotated_frame(tiny_cfg):
    model = seeded_model(_cfg(tiny_cfg), train=True)
    calls = _heads_inputs(model)
    frames = random_video(6, seed=1)
    batch = [
        _sample(frames, 3, [-2, -1, 1, 2], [1, 2, 3, 4]),
        # At the border: offsets clamped to 0 (the reference) and a frame without a record.
        _sample(frames, 0, [0, 0, 1, 2], [5, 6, 7, None]),
    ]
    losses = _losses(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    # The references first, then the annotated support frames, each distinct frame once: the
    # reference's repeats (offset 0) and the frame without a record carry no loss of their own.
    assert calls == [(2 + 4 + 1, [0, 0, 1, 2, 3, 4, 7])]


def test_centre_only_switch_keeps_the_loss_on_the_references(tiny_cfg):
    model = seeded_model(_cfg(tiny_cfg, PER_FRAME_LOSS=False), train=True)
    calls = _heads_inputs(model)
    frames = random_video(6, seed=1)
    _losses(model, [_sample(frames, 3, [-2, -1, 1, 2], [1, 2, 3, 4])])
    assert calls == [(1, [0])]


def test_samples_without_support_annotations_train_their_references(tiny_cfg):
    model = seeded_model(_cfg(tiny_cfg), train=True)
    calls = _heads_inputs(model)
    frames = random_video(6, seed=1)
    sample = _sample(frames, 3, [-2, -1, 1, 2], [1, 2, 3, 4])
    del sample["support_instances"]
    _losses(model, [sample])
    assert calls == [(1, [0])]
    sample["support_instances"] = [_instances(1)]
    with pytest.raises(ValueError, match="support_instances"):
        _losses(model, [sample])


def _run(direction, features):
    projected = direction.cell.project(features.flatten(0, 1)).unflatten(0, features.shape[:2])
    return direction(features, projected, every_step=True)


def test_per_frame_memories_run_over_the_whole_sequence():
    torch.manual_seed(0)
    module = STMNAggregation(input_shape=ShapeSpec(channels=6, stride=16), memory_channels=4)
    centre = STMNAggregation(
        input_shape=ShapeSpec(channels=6, stride=16), memory_channels=4, per_frame_loss=False
    )
    centre.load_state_dict(module.state_dict())
    g = torch.Generator().manual_seed(0)
    ref, support = torch.randn(2, 6, 5, 6, generator=g), torch.randn(2, 4, 6, 5, 6, generator=g)
    offsets = torch.tensor([[2, -1, -3, 1]] * 2)
    encoded = module.encode(support.flatten(0, 1))
    args = (
        module.encode(ref),
        {k: v.unflatten(0, (2, 4)) for k, v in encoded.items()},
        offsets,
    )
    out = module(*args)
    assert out.shape == (2, 5, 8, 5, 6)
    # The sequence in time: offsets -3, -1, 0, 1, 2.
    sequence = torch.stack([support[:, 2], support[:, 1], ref, support[:, 3], support[:, 0]], 1)
    forward = _run(module.forward_memory, sequence)
    backward = _run(module.backward_memory, sequence.flip(1)).flip(1)
    expected = torch.cat([forward, backward], dim=2)
    for j, position in enumerate([2, 4, 1, 0, 3]):  # reference, then offsets 2, -1, -3, 1
        torch.testing.assert_close(out[:, j], expected[:, position], msg=str(j))
    # The reference's memories are those of the centre-only loss (frames after it do not
    # reach its forward memory, nor frames before it its backward memory).
    torch.testing.assert_close(out[:, 0], centre(*args))


def test_a_det_image_batch_trains_every_parameter(tiny_cfg):
    # DET images: one-frame videos whose support frames are the image itself (all offsets 0),
    # so both memories have a one-frame sequence. DDP without find_unused_parameters needs a
    # gradient for every parameter in every iteration, U_z, U_r and U included.
    model = seeded_model(_cfg(tiny_cfg), train=True)
    frames = random_video(2, seed=2)
    batch = [
        _sample(frames[i : i + 1], 0, [0, 0, 0, 0], [0, 0, 0, 0], video_length=1) for i in range(2)
    ]
    losses = _losses(model, batch)
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_one_frame_sequences_give_the_step_from_a_zero_memory():
    # The zero memory of training does not change what a one-frame sequence gives.
    torch.manual_seed(0)
    module = STMNAggregation(input_shape=ShapeSpec(channels=6, stride=16), memory_channels=4)
    feature = torch.relu(torch.randn(3, 6, 5, 6))
    encoded = module.encode(feature)
    none = {k: v[:, None][:, :0] for k, v in encoded.items()}
    out = module(encoded, none, torch.zeros(3, 0, dtype=torch.long))
    expected = torch.cat(
        [
            d.cell(d.cell.project(feature), None)
            for d in (module.forward_memory, module.backward_memory)
        ],
        dim=1,
    )
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=0)


def test_stmn_without_training_support_warns(tiny_cfg, caplog):
    cfg = _cfg(tiny_cfg)
    cfg.INPUT.VIDEO.TRAIN_SAMPLING = "none"
    with caplog.at_level(logging.WARNING, logger="vod_d2"):
        build_model(cfg)
    assert any("TRAIN_SAMPLING 'none'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vod_d2"):
        build_model(_cfg(tiny_cfg))
    assert not any("TRAIN_SAMPLING" in r.getMessage() for r in caplog.records)


def _raw_boxes(record):
    return torch.tensor(
        [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in record["annotations"]
        ]
    ).view(-1, 4)


@pytest.mark.usefixtures("synthetic_datasets")
def test_mapper_gives_the_support_frames_their_annotations(tiny_cfg):
    cfg = _cfg(tiny_cfg)
    cfg.INPUT.VIDEO.TRAIN_OFFSETS = (-1, 1)
    records = get_detection_dataset_dicts(["synthetic_vid_train"], filter_empty=False)
    mapper = VideoDatasetMapper(
        cfg,
        is_train=True,
        frame_table=build_frame_table(records),
        annotation_table=AnnotationTable(records),
    )
    by_frame = {(r["video_id"], r["frame_idx"]): r for r in records}
    seen = {"none": 0, "annotated": 0, "flipped": 0, "kept": 0}
    for seed, record in enumerate(records):
        np.random.seed(seed)  # the flip (p = 0.5) is drawn once per sample
        out = mapper(record)
        width = out["image"].shape[2]
        raw = _raw_boxes(record)
        flipped = not torch.allclose(out["instances"].gt_boxes.tensor, raw)
        seen["flipped" if flipped else "kept"] += 1
        for offset, instances in zip(out["support_offsets"], out["support_instances"]):
            other = by_frame.get((record["video_id"], record["frame_idx"] + offset))
            if offset == 0:
                assert instances is out["instances"]
            elif other is None:
                assert instances is None, (seed, offset)
                seen["none"] += 1
            else:
                expected = _raw_boxes(other)
                if flipped:
                    expected = torch.stack([width - expected[:, 2], expected[:, 1],
                                            width - expected[:, 0], expected[:, 3]], 1)  # fmt: skip
                torch.testing.assert_close(instances.gt_boxes.tensor, expected, msg=str(seed))
                classes = [a["category_id"] for a in other["annotations"]]
                assert instances.gt_classes.tolist() == classes
                seen["annotated"] += 1
    assert min(seen.values()) > 0, seen
