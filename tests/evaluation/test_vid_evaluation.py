"""Hand-computed and reference-checked cases for the ImageNet VID / FGFA / COCO metrics.

Boxes are pixel-inclusive as in the devkit: [x0, y0, x1, y1] is x1 - x0 + 1 pixels wide.
"""

import math

import numpy as np
import pytest

from vod_d2.evaluation import vid_evaluation
from vod_d2.evaluation.vid_evaluation import (
    FrameDetections,
    FrameGroundTruth,
    coco_ap,
    evaluate_vid,
    inclusive_iou,
    motion_bins,
    motion_ious,
    small_object_thresholds,
    voc_ap,
)


def make_gt(frames, heights=100, widths=100):
    """frames: list of (video, frame_idx, [(box, class, track), ...]); image ids are 1..F."""
    box_frame, boxes, classes, tracks = [], [], [], []
    for f, (_, _, objects) in enumerate(frames):
        for box, cls, track in objects:
            box_frame.append(f)
            boxes.append(box)
            classes.append(cls)
            tracks.append(track)
    return FrameGroundTruth(
        image_ids=np.arange(1, len(frames) + 1),
        heights=np.full(len(frames), heights),
        widths=np.full(len(frames), widths),
        frame_video=[v for v, _, _ in frames],
        frame_index=[i for _, i, _ in frames],
        box_frame=box_frame,
        boxes=np.reshape(boxes, (-1, 4)),
        classes=classes,
        track_ids=tracks,
    )


def make_det(rows):
    """rows: list of (frame, box, score, class)."""
    return FrameDetections(
        frame=[r[0] for r in rows],
        boxes=np.reshape([r[1] for r in rows], (-1, 4)),
        scores=[r[2] for r in rows],
        classes=[r[3] for r in rows],
    )


# ---------------------------------------------------------------- IoU, thresholds, VOC AP


def test_inclusive_iou_hand_values():
    a = np.array([0, 0, 9, 9])  # 10 x 10 pixels
    cases = [
        # overlap x 5..9 = 5 px, y 10 px: 50 / (100 + 100 - 50)
        (np.array([5, 0, 14, 9]), 50 / 150),
        # sharing one pixel column: 10 / (100 + 100 - 10)
        (np.array([9, 0, 18, 9]), 10 / 190),
        # adjacent, no shared pixel
        (np.array([10, 0, 19, 9]), 0.0),
        (a, 1.0),
    ]
    for b, expected in cases:
        assert inclusive_iou(a, b) == pytest.approx(expected)
        assert inclusive_iou(b, a) == pytest.approx(expected)


def test_inclusive_iou_pairwise_broadcast_matches_elementwise():
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 50, size=(5, 2, 2)), axis=1).reshape(5, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.integers(0, 50, size=(3, 2, 2)), axis=1).reshape(3, 4)[:, [0, 2, 1, 3]]
    pairwise = inclusive_iou(a[:, None], b[None])
    assert pairwise.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert pairwise[i, j] == inclusive_iou(a[i], b[j])


def test_small_object_thresholds():
    boxes = np.array(
        [
            [0, 0, 9, 9],  # 10 x 10: 100 / (20 * 20) = 0.25
            [0, 0, 29, 19],  # 30 x 20: 600 / (40 * 30) = 0.5 exactly
            [0, 0, 99, 99],  # 100 x 100: 10000 / 12100 = 0.826 -> capped at 0.5
        ]
    )
    np.testing.assert_allclose(small_object_thresholds(boxes), [0.25, 0.5, 0.5])


def test_voc_ap_envelope():
    # precision envelope over recall: 1.0 up to 0.5, then max(0.5, 2/3) = 2/3 up to 1.0
    ap = voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # recall never reaching 1: the rest of the area is 0
    assert voc_ap(np.array([0.25]), np.array([1.0])) == pytest.approx(0.25)
    assert voc_ap(np.array([]), np.array([])) == 0.0


# ---------------------------------------------------------------- devkit matching and AP

BOX = [10, 10, 49, 49]  # 40 x 40: its threshold is 0.5


def test_ap_pools_tp_fp_over_frames_in_score_order():
    gt = make_gt(
        [
            (0, 0, [(BOX, 0, 0)]),
            (0, 1, [(BOX, 0, 0)]),
            (0, 2, []),  # no GT: its detections are still false positives
            (0, 3, [(BOX, 0, 0)]),  # never detected
        ]
    )
    det = make_det(
        [
            (1, BOX, 0.7, 0),  # TP
            (0, BOX, 0.9, 0),  # TP
            (2, BOX, 0.8, 0),  # FP (empty frame)
            (1, BOX, 0.6, 0),  # FP (duplicate)
        ]
    )
    # ranked: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP with 3 GT
    # recall 1/3, 1/3, 2/3, 2/3 ; precision 1, 1/2, 2/3, 1/2
    # envelope: 1 up to 1/3, then 2/3 up to 2/3 -> AP = 1/3 + 1/3 * 2/3 = 5/9
    metrics = evaluate_vid(gt, det, num_classes=1)
    assert metrics.class_ap[0] == pytest.approx(5 / 9)
    assert metrics.class_num_gt[0] == 3
    assert metrics.mean_ap == pytest.approx(5 / 9)


def test_small_object_iou_rule():
    tiny = [0, 0, 9, 9]  # 10 x 10: threshold 100 / 400 = 0.25
    large = [0, 0, 99, 99]  # 100 x 100: threshold 0.5
    edge = [0, 0, 29, 19]  # 30 x 20: threshold exactly 0.5
    gt = make_gt(
        [(0, 0, [(tiny, 0, 0)]), (1, 0, [(large, 1, 0)]), (2, 0, [(edge, 2, 0)])], 200, 200
    )
    det = make_det(
        [
            (0, [0, 0, 9, 3], 0.9, 0),  # 10 x 4 inside the tiny box: IoU 40 / 100 = 0.4 >= 0.25
            (1, [0, 0, 99, 39], 0.9, 1),  # 100 x 40 inside the large one: IoU 0.4 < 0.5
            (2, [0, 0, 29, 9], 0.9, 2),  # 30 x 10 inside the edge box: IoU 300 / 600 = 0.5 >= 0.5
        ]
    )
    assert inclusive_iou(det.boxes[0], gt.boxes[0]) == pytest.approx(0.4)
    assert inclusive_iou(det.boxes[1], gt.boxes[1]) == pytest.approx(0.4)
    metrics = evaluate_vid(gt, det, num_classes=3)
    np.testing.assert_allclose(metrics.class_ap, [1.0, 0.0, 1.0])


def test_duplicate_detection_is_a_false_positive():
    gt = make_gt([(0, 0, [(BOX, 0, 0)]), (0, 1, [(BOX, 0, 0)])])
    det = make_det([(0, BOX, 0.9, 0), (0, BOX, 0.8, 0), (1, BOX, 0.7, 0)])
    # ranked TP, FP (the GT of frame 0 is already taken), TP with 2 GT
    # recall 1/2, 1/2, 1 ; precision 1, 1/2, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert evaluate_vid(gt, det, 1).class_ap[0] == pytest.approx(5 / 6)


def test_matching_goes_in_score_order():
    gt = make_gt([(0, 0, [(BOX, 0, 0)]), (0, 1, [(BOX, 0, 0)])])
    # The loose box (40 x 24 inside BOX: IoU 0.6) outranks the exact one and takes the GT; the
    # exact box is then the duplicate. Same ranking as above: TP, FP, TP -> AP 5/6.
    det = make_det([(0, [10, 10, 49, 33], 0.95, 0), (0, BOX, 0.9, 0), (1, BOX, 0.7, 0)])
    assert evaluate_vid(gt, det, 1).class_ap[0] == pytest.approx(5 / 6)


def test_greedy_matching_takes_the_unmatched_gt_of_highest_iou():
    # 100 x 100 boxes, so every threshold is 0.5
    gt1 = [0, 0, 99, 99]
    gt2 = [30, 0, 129, 99]
    gt = make_gt([(0, 0, [(gt1, 0, 0), (gt2, 0, 1)])])
    a = [20, 0, 119, 99]  # IoU with gt1: 8000 / 12000 = 0.667 ; with gt2: 9000 / 11000 = 0.818
    b = [40, 0, 139, 99]  # IoU with gt1: 6000 / 14000 = 0.43 < 0.5 ; with gt2: 0.818
    det = make_det([(0, a, 0.9, 0), (0, b, 0.8, 0)])
    # a takes gt2 (its best), so b finds nothing: TP, FP with 2 GT -> AP = 1/2.
    # (Taking the first GT above threshold instead would give a -> gt1, b -> gt2 and AP 1.)
    assert evaluate_vid(gt, det, 1).class_ap[0] == pytest.approx(0.5)
    # Equal IoU with two unmatched GT: the first GT wins, the second stays for the next box.
    twin = make_gt([(0, 0, [(BOX, 0, 0), (BOX, 0, 1)])])
    det = make_det([(0, BOX, 0.9, 0), (0, BOX, 0.8, 0)])
    assert evaluate_vid(twin, det, 1).class_ap[0] == pytest.approx(1.0)


def test_equal_scores_rank_in_frame_order_like_the_devkit():
    # Frame 0 gets an FP, frame 1 a TP, both at score 0.5. The devkit pools frames in order and
    # sorts stably, so frame 0's FP ranks first: FP then TP -> AP = 1 * 1/2.
    gt = make_gt([(0, 0, []), (0, 1, [(BOX, 0, 0)])])
    det = make_det([(1, BOX, 0.5, 0), (0, BOX, 0.5, 0)])
    assert evaluate_vid(gt, det, 1).class_ap[0] == pytest.approx(0.5)


def test_classes_are_separate():
    gt = make_gt([(0, 0, [(BOX, 0, 0)]), (0, 1, [(BOX, 0, 0)])])
    det = make_det([(0, BOX, 0.9, 0), (1, BOX, 0.9, 1)])  # right class, then wrong class
    metrics = evaluate_vid(gt, det, num_classes=3)
    # class 0: one TP of two GT -> AP 0.5; classes 1 and 2 have no GT -> NaN, left out of mAP
    assert metrics.class_ap[0] == pytest.approx(0.5)
    assert np.isnan(metrics.class_ap[1]) and np.isnan(metrics.class_ap[2])
    assert metrics.mean_ap == pytest.approx(0.5)
    # class-1 detections cannot take class-0 GT, so more of them leave class 0 unchanged
    more = make_det([(0, BOX, 0.99, 1), (0, BOX, 0.9, 0), (1, BOX, 0.9, 1)])
    assert evaluate_vid(gt, more, num_classes=3).class_ap[0] == pytest.approx(0.5)


def test_no_detections_and_no_gt():
    gt = make_gt([(0, 0, [(BOX, 0, 0)])])
    metrics = evaluate_vid(gt, make_det([]), num_classes=2)
    assert metrics.class_ap[0] == 0.0 and np.isnan(metrics.class_ap[1])
    empty = make_gt([(0, 0, [])])
    metrics = evaluate_vid(empty, make_det([(0, BOX, 0.9, 0)]), num_classes=2)
    assert np.isnan(metrics.mean_ap)


def test_bad_class_ids_raise():
    gt = make_gt([(0, 0, [(BOX, 0, 0)])])
    with pytest.raises(ValueError, match="class id 5"):
        evaluate_vid(gt, make_det([(0, BOX, 0.9, 5)]), num_classes=2)


# ---------------------------------------------------------------- motion IoU and bins


def shifted(dx):
    """A 10 x 10 box moved right by dx pixels."""
    return [dx, 0, dx + 9, 9]


def test_motion_iou_of_a_hand_made_track():
    # A 10x10 box moving 5 px per frame: IoU at 1 frame = 5*10 / (200 - 50) = 1/3, at 2+ = 0.
    # With K = 2: frame 0 sees frames 1, 2 -> (1/3 + 0) / 2 = 1/6; frame 1 sees 0, 2, 3 -> 2/9;
    # frame 2 sees 0, 1, 3 (4 is missing) -> 1/3 * 2 / 3 = 2/9; frame 3 sees 1, 2 -> 1/6.
    video = [0, 0, 0, 0]
    frame = [0, 1, 2, 3]
    boxes = np.array([shifted(0), shifted(5), shifted(10), shifted(15)])
    expected = [1 / 6, 2 / 9, 2 / 9, 1 / 6]
    np.testing.assert_allclose(motion_ious(video, frame, [7] * 4, boxes, 2), expected)

    # Frame 5 is 2 frames after 3: it sees only frame 3 (IoU 1/3 at 5 px apart)
    boxes5 = np.vstack([boxes, shifted(20)])
    got = motion_ious(video + [0], frame + [5], [7] * 5, boxes5, 2)
    np.testing.assert_allclose(got, [1 / 6, 2 / 9, 2 / 9, (1 / 3 + 0 + 1 / 3) / 3, 1 / 3])


def test_motion_iou_keeps_tracks_and_videos_apart():
    # A static object (IoU 1 with itself) next to another track and the same track id in another
    # video, each of which would pull the mean down if mixed in.
    video = [0, 0, 0, 0, 1, 1]
    frame = [0, 1, 0, 1, 0, 1]
    tracks = [1, 1, 2, 2, 1, 1]
    boxes = np.array([shifted(0), shifted(0), shifted(50), shifted(60), shifted(30), shifted(30)])
    got = motion_ious(video, frame, tracks, boxes, 10)
    np.testing.assert_allclose(got, [1, 1, 0, 0, 1, 1])


def test_motion_iou_without_a_track_or_neighbour_is_zero():
    got = motion_ious([0, 0, 0], [0, 0, 30], [-1, 4, 4], np.array([shifted(0)] * 3), 10)
    # no track; track 4 in frames 0 and 30, which are more than 10 frames apart
    np.testing.assert_allclose(got, [0, 0, 0])


def test_motion_iou_rejects_a_track_twice_in_a_frame():
    with pytest.raises(ValueError, match="Track 3 has two boxes in frame 0"):
        motion_ious([0, 0], [0, 0], [3, 3], np.array([shifted(0)] * 2), 10)


def test_motion_bins():
    got = motion_bins(np.array([1.0, 0.95, 0.9, 0.8, 0.7, 0.69, 0.0]))
    # 0 = slow (> 0.9), 1 = medium ([0.7, 0.9]), 2 = fast (< 0.7)
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 1, 2, 2])


def two_speed_video():
    """Three frames with a static object S (motion IoU 1: slow) and a fast object F.

    F jumps 50 px per frame so it never overlaps itself (motion IoU 0: fast). Both are class 0,
    so only the ignore rule keeps detections of one from counting against the other's bin.
    """
    s_box = [0, 0, 39, 39]  # 40 x 40
    frames = [
        (0, t, [(s_box, 0, 1), ([100 + 50 * t, 0, 139 + 50 * t, 39], 0, 2)]) for t in range(3)
    ]
    return make_gt(frames, 200, 400), s_box, [150, 0, 189, 39]  # F's box in frame 1


def test_motion_bins_ignore_rule():
    gt, s_box, f_box = two_speed_video()
    det = make_det(
        [
            (1, [300, 100, 309, 109], 0.95, 0),  # background, in a frame with S and F
            (1, s_box, 0.9, 0),  # matches S
            (1, [150, 0, 189, 15], 0.7, 0),  # overlaps only F, IoU 16/40 = 0.4 < 0.5: unmatched
            (1, f_box, 0.5, 0),  # matches F
        ]
    )
    m = evaluate_vid(gt, det, num_classes=1)
    # 3 slow GT (S in 3 frames) and 3 fast GT; no medium object
    assert m.motion_class_num_gt["slow"][0] == 3 and m.motion_class_num_gt["fast"][0] == 3
    assert np.isnan(m.motion_mean_ap("medium"))
    # slow bin (F ignored):
    #   0.95 background: overlaps nothing, frame has GT -> FP weight = ignored share 1/2
    #   0.90 on S -> TP ; 0.70 best overlap is ignored F -> FP 0 ; 0.50 matched to F -> ignored
    #   cum tp 0, 1, 1, 1 ; fp 0.5, 0.5, 0.5, 0.5 -> precision at recall 1/3 = 1 / 1.5
    #   AP = 1/3 * 2/3 = 2/9
    assert m.motion_mean_ap("slow") == pytest.approx(2 / 9)
    # fast bin (S ignored):
    #   0.95 -> FP 1/2 ; 0.90 matched to S -> ignored ; 0.70 best overlap is in-bin F -> FP 1 ;
    #   0.50 on F -> TP: cum tp 0, 0, 0, 1 ; fp 0.5, 0.5, 1.5, 1.5 -> precision 1 / 2.5
    #   AP = 1/3 * 0.4
    assert m.motion_mean_ap("fast") == pytest.approx(0.4 / 3)
    # overall (nothing ignored, the devkit): FP, TP, FP, TP with 6 GT
    #   precision 0, 1/2, 1/3, 1/2 at recall 0, 1/6, 1/6, 2/6 -> envelope 1/2 -> AP = 2/6 * 1/2
    assert m.mean_ap == pytest.approx(1 / 6)


def test_motion_background_fp_in_a_frame_without_gt():
    # Drop F from frame 2 so the dataset holds 3 slow and 2 fast objects, then add an empty frame.
    frames = [
        (0, 0, [([0, 0, 39, 39], 0, 1), ([100, 0, 139, 39], 0, 2)]),
        (0, 1, [([0, 0, 39, 39], 0, 1), ([150, 0, 189, 39], 0, 2)]),
        (0, 2, [([0, 0, 39, 39], 0, 1)]),
        (1, 0, []),
    ]
    gt = make_gt(frames, 200, 400)
    det = make_det([(3, [0, 0, 9, 9], 0.9, 0), (0, [0, 0, 39, 39], 0.8, 0)])
    m = evaluate_vid(gt, det, num_classes=1)
    # The empty-frame FP weighs the bin's share of all GT: slow 3/5, fast 2/5.
    # slow: FP 0.6 then TP -> precision 1/1.6 at recall 1/3 -> AP = 1/3 / 1.6
    assert m.motion_mean_ap("slow") == pytest.approx((1 / 3) / 1.6)
    # fast: FP 0.4, then the S match is ignored -> no TP -> AP 0
    assert m.motion_mean_ap("fast") == 0.0
    # overall: FP 1 then TP of 5 GT -> AP = 1/5 * 1/2
    assert m.mean_ap == pytest.approx(0.1)


def test_motion_background_fp_weight_in_a_mixed_frame():
    # Frame 0 holds one slow object S and two fast ones F1, F2 (each jumps 50 px per frame).
    frames = [
        (
            0,
            t,
            [
                ([0, 0, 39, 39], 0, 1),
                ([100 + 50 * t, 0, 139 + 50 * t, 39], 0, 2),
                ([100 + 50 * t, 100, 139 + 50 * t, 139], 0, 3),
            ],
        )
        for t in range(2)
    ]
    gt = make_gt(frames, 400, 400)
    det = make_det(
        [
            (0, [300, 300, 309, 309], 0.9, 0),  # background, overlaps nothing
            (0, [0, 0, 39, 39], 0.8, 0),  # S
            (0, [100, 0, 139, 39], 0.7, 0),  # F1
        ]
    )
    m = evaluate_vid(gt, det, num_classes=1)
    # FGFA weighs the background FP by the share of *ignored* GT in its frame:
    # slow bin: 2 of 3 ignored -> FP 2/3, then TP on S (2 slow GT): precision 1 / (5/3) = 0.6
    #   at recall 1/2 -> AP 0.3 (F1's match is ignored)
    assert m.motion_mean_ap("slow") == pytest.approx(0.3)
    # fast bin: 1 of 3 ignored -> FP 1/3, S ignored, TP on F1 (4 fast GT): precision 0.75 at
    #   recall 1/4 -> AP 0.1875
    assert m.motion_mean_ap("fast") == pytest.approx(0.1875)


# ---------------------------------------------------------------- loop reference on random data


def reference_evaluation(gt, det, num_classes, motion_frames):
    """The devkit and FGFA rules written as plain loops, one frame and one box at a time."""

    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
        ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
        if iw <= 0 or ih <= 0:
            return 0.0
        ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return iw * ih / (ua - iw * ih)

    num_gt = len(gt.boxes)
    motion = []
    for k in range(num_gt):
        f = gt.box_frame[k]
        values = []
        for j in range(num_gt):
            g = gt.box_frame[j]
            same = gt.track_ids[k] >= 0 and gt.track_ids[j] == gt.track_ids[k]
            same = same and gt.frame_video[g] == gt.frame_video[f]
            gap = abs(int(gt.frame_index[g]) - int(gt.frame_index[f]))
            if same and 0 < gap <= motion_frames:
                values.append(iou(gt.boxes[k], gt.boxes[j]))
        motion.append(sum(values) / len(values) if values else 0.0)
    slow_medium_fast = [
        [m > 0.9 for m in motion],
        [0.7 <= m <= 0.9 for m in motion],
        [m < 0.7 for m in motion],
    ]
    results = []
    for in_bin in [[True] * num_gt] + slow_medium_fast:
        empty_weight = sum(in_bin) / num_gt if num_gt else 1.0
        pooled = []  # (score, class, tp, fp) in frame order
        for f in range(gt.num_frames):
            gts = [k for k in range(num_gt) if gt.box_frame[k] == f]
            dets = [d for d in range(len(det.scores)) if det.frame[d] == f]
            dets.sort(key=lambda d: -det.scores[d])  # stable, like MATLAB's sort
            taken = set()
            for d in dets:
                best, best_k, ov_in, ov_out = -math.inf, -1, -1.0, -1.0
                for k in gts:
                    ov = iou(det.boxes[d], gt.boxes[k])
                    w = gt.boxes[k][2] - gt.boxes[k][0] + 1
                    h = gt.boxes[k][3] - gt.boxes[k][1] + 1
                    thr = min(0.5, w * h / ((w + 10) * (h + 10)))
                    if det.classes[d] == gt.classes[k] and k not in taken:
                        if ov >= thr and ov > best:
                            best, best_k = ov, k
                    if in_bin[k]:
                        ov_in = max(ov_in, ov)
                    else:
                        ov_out = max(ov_out, ov)
                if best_k >= 0:
                    taken.add(best_k)
                    tp, fp = float(in_bin[best_k]), 0.0
                elif ov_in > ov_out:
                    tp, fp = 0.0, 1.0
                elif ov_out > ov_in:
                    tp, fp = 0.0, 0.0
                elif not gts:
                    tp, fp = 0.0, empty_weight
                else:
                    tp, fp = 0.0, sum(not in_bin[k] for k in gts) / len(gts)
                pooled.append((det.scores[d], det.classes[d], tp, fp))
        pooled.sort(key=lambda r: -r[0])
        aps = []
        for c in range(num_classes):
            npos = sum(1 for k in range(num_gt) if gt.classes[k] == c and in_bin[k])
            if npos == 0:
                aps.append(math.nan)
                continue
            tp_cum = fp_cum = 0.0
            rec, prec = [], []
            for _, cls, tp, fp in pooled:
                if cls == c:
                    tp_cum, fp_cum = tp_cum + tp, fp_cum + fp
                    rec.append(tp_cum / npos)
                    prec.append(tp_cum / max(tp_cum + fp_cum, np.finfo(float).eps))
            mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            aps.append(
                sum(
                    (mrec[i] - mrec[i - 1]) * mpre[i]
                    for i in range(1, len(mrec))
                    if mrec[i] != mrec[i - 1]
                )
            )
        results.append(np.array(aps))
    return results


def random_case(rng):
    """A few short videos of moving objects (some with gaps), and jittered + random detections."""
    num_classes = 3
    frames, det_rows = [], []
    for video in range(3):
        num_objects = rng.integers(0, 4)
        start = rng.integers(0, 80, size=(num_objects, 2))
        size = rng.integers(4, 40, size=(num_objects, 2))
        speed = rng.choice([0, 1, 3, 8], size=(num_objects, 2))
        classes = rng.integers(0, num_classes, size=num_objects)
        tracks = np.where(rng.random(num_objects) < 0.1, -1, np.arange(num_objects))
        for t in range(int(rng.integers(1, 9))):
            objects = []
            for o in range(num_objects):
                if rng.random() < 0.15:  # the object is out of view in this frame
                    continue
                x0, y0 = start[o] + speed[o] * t
                objects.append(
                    ([x0, y0, x0 + size[o, 0] - 1, y0 + size[o, 1] - 1], classes[o], tracks[o])
                )
            f = len(frames)
            frames.append((video, t, objects))
            for box, cls, _ in objects:
                for _ in range(rng.integers(0, 3)):
                    jitter = rng.normal(0, 2.5, size=4)
                    label = cls if rng.random() < 0.8 else rng.integers(0, num_classes)
                    # scores on a coarse grid so that ties occur
                    det_rows.append((f, np.array(box) + jitter, round(rng.random(), 1), label))
            for _ in range(rng.integers(0, 3)):
                x0, y0 = rng.uniform(0, 100, size=2)
                w, h = rng.uniform(3, 40, size=2)
                det_rows.append(
                    (f, [x0, y0, x0 + w, y0 + h], round(rng.random(), 1), rng.integers(0, 3))
                )
    order = rng.permutation(len(det_rows))
    return make_gt(frames, 200, 200), make_det([det_rows[i] for i in order]), num_classes


@pytest.mark.parametrize("seed", range(12))
def test_matches_loop_reference_on_random_videos(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    gt, det, num_classes = random_case(rng)
    motion_frames = int(rng.integers(1, 4))
    # Tiny chunks so the chunked pair generation is exercised across frame boundaries.
    monkeypatch.setattr(vid_evaluation, "_MAX_PAIRS_PER_CHUNK", int(rng.integers(1, 9)))
    got = evaluate_vid(gt, det, num_classes, motion_frames=motion_frames)
    expected = reference_evaluation(gt, det, num_classes, motion_frames)
    np.testing.assert_allclose(got.class_ap, expected[0], rtol=1e-10, atol=1e-12)
    for b, name in enumerate(vid_evaluation.MOTION_BIN_NAMES):
        np.testing.assert_allclose(
            got.motion_class_ap[name], expected[b + 1], rtol=1e-10, atol=1e-12, err_msg=name
        )


# ---------------------------------------------------------------- COCO


def test_coco_ap_perfect_and_shifted():
    gt = make_gt(
        [
            (0, 0, [([0, 0, 20, 20], 0, 0), ([30, 30, 70, 60], 1, 1)]),
            (0, 1, [([5, 5, 40, 40], 0, 0)]),
        ]
    )
    perfect = make_det(
        [(0, [0, 0, 20, 20], 0.9, 0), (0, [30, 30, 70, 60], 0.8, 1), (1, [5, 5, 40, 40], 0.7, 0)]
    )
    result = coco_ap(gt, perfect, num_classes=2)
    for key in ("AP", "AP50", "AP75"):
        assert result[key] == pytest.approx(100.0)
    # One GT, detected at COCO IoU 0.62 (continuous widths: 20 x 12.4 inside 20 x 20):
    # a hit at thresholds 0.50, 0.55, 0.60 only -> AP = 3/10 * 100, AP50 = 100, AP75 = 0.
    gt = make_gt([(0, 0, [([0, 0, 20, 20], 0, 0)])])
    result = coco_ap(gt, make_det([(0, [0, 0, 20, 12.4], 0.9, 0)]), num_classes=1)
    assert result["AP"] == pytest.approx(30.0)
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert coco_ap(gt, make_det([]), num_classes=1) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
