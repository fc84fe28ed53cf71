"""AP by condition of the ground truth (vod_d2.evaluation.conditions), worked out by hand."""

import math

import numpy as np
import pytest
from detectron2.structures import BoxMode

from vod_d2.evaluation import FrameDetections, evaluate_vid, ground_truth_from_records
from vod_d2.evaluation.conditions import condition_subsets

A = [0, 0, 39, 39]  # 40 x 40 boxes
C = [100, 0, 139, 39]


def _record(f, boxes, conditions=()):
    record = {
        "image_id": f + 1, "height": 200, "width": 200, "video_id": "v", "frame_idx": f,
        "annotations": [
            {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "track_id": t,
             "occluded": occluded}
            for t, (box, occluded) in enumerate(boxes)
        ],
    }  # fmt: skip
    if conditions:
        record["conditions"] = conditions
    return record


# frame 0: A, clean; frame 1, motion-blurred: B; frame 2: C occluded and D clean; frame 3,
# defocused: no GT. Detections (all class 0), in score order:
#   d3 0.95 frame 2 background (overlaps nothing)   d1 0.90 on A   d4 0.85 frame 3 background
#   d2 0.80 on B   d6 0.75 frame 2, IoU 1/3 with C: unmatched, overlaps C most   d5 0.70 on D
RECORDS = [
    _record(0, [(A, False)]),
    _record(1, [(A, False)], ("motion_blur",)),
    _record(2, [(C, True), (A, False)]),
    _record(3, [], ("defocus",)),
]
DETECTIONS = FrameDetections(
    frame=[2, 0, 3, 1, 2, 2],
    boxes=[[180, 180, 189, 189], A, [180, 180, 189, 189], A, A, [120, 0, 159, 39]],
    scores=[0.95, 0.9, 0.85, 0.8, 0.7, 0.75],
    classes=[0] * 6,
)


def test_the_records_tags_and_occluded_flags_become_conditions():
    gt, _ = ground_truth_from_records(RECORDS, 1)
    assert gt.condition_names == ("defocus", "motion_blur", "occluded")
    assert gt.frame_conditions.tolist() == [
        [False, False, False], [False, True, False], [False, False, False], [True, False, False]
    ]  # fmt: skip
    assert gt.box_conditions.tolist() == [
        [False, False, False], [False, True, False], [False, False, True], [False, False, False]
    ]  # fmt: skip
    subsets = condition_subsets(
        gt.condition_names, gt.frame_conditions, gt.box_frame, gt.box_conditions
    )
    assert list(subsets) == ["clean", "defocus", "motion_blur", "occluded", "degraded"]
    # A background detection's weight per frame: the share of the frame's GT in the condition,
    # and for frame 3 (no GT) its own tags.
    assert subsets["clean"][1].tolist() == [1, 0, 0.5, 0]
    assert subsets["occluded"][1].tolist() == [0, 0, 0.5, 0]
    assert subsets["degraded"][1].tolist() == [0, 1, 0.5, 1]
    assert subsets["defocus"][1].tolist() == [0, 0, 0, 1]


def test_condition_aps_worked_out_by_hand():
    gt, _ = ground_truth_from_records(RECORDS, 1)
    m = evaluate_vid(gt, DETECTIONS, num_classes=1)
    # clean (A, D): d3 FP 1/2, d1 TP, d4 FP 0 (frame 3 is defocused), d2 ignored (B), d6 FP 0
    #   (it overlaps C most, which is not clean), d5 TP: precision 1/1.5, then 2/2.5 at
    #   recall 1 -> envelope 0.8 -> AP 0.8
    assert m.condition_mean_ap("clean") == pytest.approx(0.8)
    # motion_blur (B): the only TP is d2, nothing else counts -> AP 1
    assert m.condition_mean_ap("motion_blur") == pytest.approx(1.0)
    # occluded (C): no TP -> AP 0
    assert m.condition_mean_ap("occluded") == 0.0
    # degraded (B, C): d3 FP 1/2, d4 FP 1, d2 TP, d6 FP 1, d5 ignored -> precision 1/2.5 at
    #   recall 1/2
    assert m.condition_mean_ap("degraded") == pytest.approx(0.2)
    # defocus has no GT: no AP
    assert math.isnan(m.condition_mean_ap("defocus"))
    assert m.condition_class_num_gt["degraded"].tolist() == [2]
    # all (the devkit): FP TP FP TP FP TP of 4 GT -> envelope 0.5 up to recall 3/4 -> 0.375
    assert m.mean_ap == pytest.approx(0.375)


def test_without_conditions_nothing_is_reported_and_names_cannot_clash():
    plain = [{**r, "annotations": [{**a, "occluded": False} for a in r["annotations"]]}
             for r in RECORDS]  # fmt: skip
    for r in plain:
        r.pop("conditions", None)
    gt, _ = ground_truth_from_records(plain, 1)
    assert gt.condition_names == () and evaluate_vid(gt, DETECTIONS, 1).condition_class_ap == {}
    clash = [dict(RECORDS[0], conditions=("slow",))]
    with pytest.raises(ValueError, match="reserved"):
        ground_truth_from_records(clash, 1)


def test_bootstrap_free_class_aps_match_the_weighted_ones_at_unit_weights():
    gt, _ = ground_truth_from_records(RECORDS, 1)
    from vod_d2.evaluation.vid_evaluation import match_detections

    matching = match_detections(gt, DETECTIONS, 1)
    for name, (tp, fp, in_box) in matching.subsets().items():
        plain, _ = matching.class_aps(tp, fp, in_box)
        weighted, _ = matching.class_aps(tp, fp, in_box, weights=np.ones((2, gt.num_frames)))
        np.testing.assert_allclose(weighted, np.stack([plain, plain]), err_msg=name)
