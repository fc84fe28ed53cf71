"""ImageNet VID detection metrics: the devkit mAP, FGFA's motion-speed breakdown, COCO AP.

Pure numpy (plus pycocotools for the COCO numbers); nothing here touches detectron2's catalogs.

**VID mAP@0.5 (ImageNet VID devkit, ``eval_vid_detection.m``).** Boxes use the devkit's
pixel-inclusive convention: a box ``[x0, y0, x1, y1]`` is ``x1 - x0 + 1`` pixels wide, and IoU is
computed with the same ``+1`` (the ground truth is used exactly as the XML gives it). Each ground
truth (GT) box gets its own threshold ``thr = min(0.5, w*h / ((w + 10) * (h + 10)))``, so small
objects are matched at lower IoU. In every frame the detections, in descending score order, are
greedily matched to the unmatched GT box of the same class with the highest IoU ``>= thr`` of that
box (ties: the first GT box). TP/FP are pooled over *all* evaluated frames (frames without GT
contribute false positives), sorted by score, and each class's AP is the area under the monotone
precision envelope over all recall points (VOC 2010+ style). mAP is the mean over classes that have
GT; the devkit averages over the 30 VID classes, all of which have GT in ImageNet VID val, so the
two agree there. A class without GT has AP NaN and is left out of the mean.

**Motion-speed mAP (FGFA, Zhu et al. ICCV 2017, ``vid_eval_motion``).** An object's motion IoU in
frame t is the mean IoU (``+1`` convention) of its box with its own boxes (same video, same
track id) in frames t-K..t+K, t excluded, K = ``motion_frames`` (10). Objects with no such box
(one-frame tracks, ``track_id == -1``) get 0, as FGFA's reference file does with empty entries,
so they are "fast". Bins: slow ``> 0.9``, medium ``[0.7, 0.9]``, fast ``< 0.7`` (FGFA's code uses
closed intervals, so a value of exactly 0.7 or 0.9 falls in two bins there; here the bins are
disjoint). For one bin, GT outside the bin is ignored: it is still matched as above, but a
detection matched to it is neither TP nor FP, and it is not counted in the recall denominator.
An unmatched detection counts as an FP of weight 1 when its highest IoU (any class) is with an
in-bin GT box, 0 when it is with an ignored one, and otherwise (no overlap with anything) FGFA's
fractional weight: the share of in-bin GT over the whole dataset for a frame without GT, else the
share of *ignored* GT boxes in its frame. That last weight looks inverted, but it is what FGFA's
reference code (and the later VID code bases that copied it) computes, so it is kept for
comparability with published slow/medium/fast numbers. With no GT ignored, these rules reduce
exactly to the devkit.

**AP by condition of the ground truth** (:mod:`.conditions`). Where the ground truth says in
what condition each box was seen (a frame's tags such as ``motion_blur`` or ``defocus``, an
object's ``occluded`` flag), AP is also computed per condition, beside the motion bins: with
only the GT in that condition counted, the rest ignored as in a motion bin. Those rules are
vod_d2's (no published number to match); see :mod:`.conditions`.

**COCO AP/AP50/AP75 (pycocotools).** The usual COCO protocol (IoU 0.5:0.95, at most 100 detections
per frame, COCO area ranges) on the same frames, with continuous box widths ``x1 - x0`` as other
video toolkits' CocoVID conversions use. Neither the small-object rule nor the ``+1`` applies.
"""

import contextlib
import dataclasses
import io
import logging
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .conditions import CLEAN, DEGRADED, condition_subsets, condition_tp_fp

__all__ = [
    "MOTION_BIN_NAMES",
    "FrameGroundTruth",
    "FrameDetections",
    "Matching",
    "VIDMetrics",
    "inclusive_iou",
    "small_object_thresholds",
    "voc_ap",
    "motion_ious",
    "motion_bins",
    "evaluate_vid",
    "match_detections",
    "class_aps",
    "coco_ap",
]

logger = logging.getLogger(__name__)

# Order of the bins in `motion_bins` and in the reports.
MOTION_BIN_NAMES = ("slow", "medium", "fast")
# Detection/GT pairs handled at once; bounds the peak memory of the pairwise IoUs (~200 MB).
_MAX_PAIRS_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class FrameGroundTruth:
    """Ground truth of the evaluated frames, flattened over boxes (F frames, G boxes).

    Attributes:
        image_ids (ndarray): (F,) int64 ``image_id`` of each frame, in evaluation order.
        heights (ndarray): (F,) int64 image heights.
        widths (ndarray): (F,) int64 image widths.
        frame_video (ndarray): (F,) int64 index of each frame's video (any consistent coding).
        frame_index (ndarray): (F,) int64 ``frame_idx`` of each frame in its video.
        box_frame (ndarray): (G,) int64 frame (0..F-1) holding each box.
        boxes (ndarray): (G, 4) float64 XYXY boxes in the devkit's pixel-inclusive convention.
        classes (ndarray): (G,) int64 contiguous class ids.
        track_ids (ndarray): (G,) int64 track ids, -1 for boxes without a track.
        condition_names (tuple[str]): K conditions the GT is tagged with (may be empty).
        frame_conditions (ndarray): (F, K) bool, the conditions that hold for a whole frame (its
            tags, e.g. ``motion_blur``); False for an object's condition (``occluded``).
        box_conditions (ndarray): (G, K) bool, the conditions each box was seen in: its frame's
            and its own.
    """

    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    frame_video: np.ndarray
    frame_index: np.ndarray
    box_frame: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    track_ids: np.ndarray
    condition_names: Tuple[str, ...] = ()
    frame_conditions: Optional[np.ndarray] = None
    box_conditions: Optional[np.ndarray] = None

    def __post_init__(self):
        _coerce(self, ("image_ids", "heights", "widths", "frame_video", "frame_index"), np.int64)
        _coerce(self, ("box_frame", "classes", "track_ids"), np.int64)
        _coerce(self, ("boxes",), np.float64, width=4)
        _check_lengths(self, ("image_ids", "heights", "widths", "frame_video", "frame_index"))
        _check_lengths(self, ("box_frame", "boxes", "classes", "track_ids"))
        if len(self.box_frame) and not 0 <= self.box_frame.min() <= self.box_frame.max() < len(
            self.image_ids
        ):
            raise ValueError(f"box_frame must index the {len(self.image_ids)} frames.")
        names = tuple(self.condition_names)
        reserved = {"all", CLEAN, DEGRADED, *MOTION_BIN_NAMES} & set(names)
        if reserved or len(set(names)) != len(names):
            raise ValueError(
                f"Condition names {list(names)} repeat a name or use a reserved one "
                f"{sorted(reserved)} (all, clean, degraded and the motion bins are reported)."
            )
        object.__setattr__(self, "condition_names", names)
        for field, rows in (("frame_conditions", self.num_frames), ("box_conditions", len(self))):
            value = getattr(self, field)
            value = np.zeros((rows, len(names)), bool) if value is None else value
            value = np.asarray(value, dtype=bool).reshape(rows, len(names))
            object.__setattr__(self, field, value)

    def __len__(self) -> int:
        """G, the number of GT boxes."""
        return len(self.box_frame)

    @property
    def num_frames(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True)
class FrameDetections:
    """Detections of the evaluated frames, flattened over boxes (N detections).

    Attributes:
        frame (ndarray): (N,) int64 frame (0..F-1 of the matching `FrameGroundTruth`).
        boxes (ndarray): (N, 4) float64 XYXY boxes in the original image coordinates.
        scores (ndarray): (N,) float64 confidences.
        classes (ndarray): (N,) int64 contiguous class ids.
    """

    frame: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self):
        _coerce(self, ("frame", "classes"), np.int64)
        _coerce(self, ("scores",), np.float64)
        _coerce(self, ("boxes",), np.float64, width=4)
        _check_lengths(self, ("frame", "boxes", "scores", "classes"))


def _coerce(record, names, dtype, width=None) -> None:
    for name in names:
        value = np.asarray(getattr(record, name), dtype=dtype)
        if width is not None:
            value = value.reshape(-1, width)
        object.__setattr__(record, name, value)


def _check_lengths(record, names) -> None:
    lengths = {name: len(getattr(record, name)) for name in names}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{type(record).__name__}: fields have different lengths {lengths}.")


@dataclass(frozen=True)
class VIDMetrics:
    """Per-class results of `evaluate_vid` (C classes); APs are fractions in [0, 1].

    Attributes:
        class_ap (ndarray): (C,) devkit AP of each class, NaN for classes without GT.
        class_num_gt (ndarray): (C,) number of GT boxes of each class.
        motion_class_ap (dict[str, ndarray]): bin name -> (C,) AP within that motion bin.
        motion_class_num_gt (dict[str, ndarray]): bin name -> (C,) number of GT boxes in the bin.
        condition_class_ap (dict[str, ndarray]): condition -> (C,) AP of the GT in that
            condition (:func:`.conditions.condition_subsets`; empty without conditions).
        condition_class_num_gt (dict[str, ndarray]): condition -> (C,) GT boxes in it.
    """

    class_ap: np.ndarray
    class_num_gt: np.ndarray
    motion_class_ap: Dict[str, np.ndarray]
    motion_class_num_gt: Dict[str, np.ndarray]
    condition_class_ap: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    condition_class_num_gt: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def mean_ap(self) -> float:
        """Devkit mAP: mean AP over the classes with GT (NaN when no class has GT)."""
        return _mean_over_classes(self.class_ap)

    def motion_mean_ap(self, bin_name: str) -> float:
        """FGFA motion-bin mAP: mean AP over the classes with GT in bin ``bin_name``."""
        return _mean_over_classes(self.motion_class_ap[bin_name])

    def condition_mean_ap(self, condition: str) -> float:
        """mAP of the GT in ``condition``: mean AP over the classes with GT in it."""
        return _mean_over_classes(self.condition_class_ap[condition])


def _mean_over_classes(ap: np.ndarray) -> float:
    return float(mean_over_classes(ap))


def mean_over_classes(ap: np.ndarray) -> np.ndarray:
    """(..., C) APs -> (...) means over the classes that are not NaN (NaN where none is)."""
    valid = ~np.isnan(ap)
    with np.errstate(invalid="ignore"):
        return np.where(valid, ap, 0.0).sum(-1) / valid.sum(-1)


def inclusive_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU with the devkit's pixel-inclusive widths, broadcast elementwise over leading dims.

    ``inclusive_iou(a[:, None], b[None])`` gives the (N, M) pairwise matrix.

    Args:
        boxes1 (ndarray): (..., 4) XYXY boxes.
        boxes2 (ndarray): (..., 4) XYXY boxes, broadcastable against ``boxes1``.

    Returns:
        ndarray: (...) float64 IoU; 0 where the boxes do not overlap.
    """
    a = np.asarray(boxes1, dtype=np.float64)
    b = np.asarray(boxes2, dtype=np.float64)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = (a[..., 2] - a[..., 0] + 1.0) * (a[..., 3] - a[..., 1] + 1.0)
    area_b = (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def small_object_thresholds(
    boxes: np.ndarray, iou_threshold: float = 0.5, pixel_tolerance: float = 10.0
) -> np.ndarray:
    """The devkit's per-GT IoU threshold ``min(iou_threshold, w*h / ((w + t) * (h + t)))``.

    Args:
        boxes (ndarray): (G, 4) XYXY GT boxes (pixel-inclusive: ``w = x1 - x0 + 1``).
        iou_threshold (float): the threshold for objects large enough.
        pixel_tolerance (float): t, the localisation slack in pixels granted to small objects.

    Returns:
        ndarray: (G,) float64 thresholds.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    return np.minimum(iou_threshold, w * h / ((w + pixel_tolerance) * (h + pixel_tolerance)))


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone (non-increasing) precision envelope, all recall points.

    Args:
        recall (ndarray): (K,) cumulative recall in ranked order.
        precision (ndarray): (K,) cumulative precision in ranked order.

    Returns:
        float: the average precision in [0, 1].
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # The envelope makes precision at recall r the best precision at any recall >= r.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def motion_ious(
    box_video: np.ndarray,
    box_frame_index: np.ndarray,
    track_ids: np.ndarray,
    boxes: np.ndarray,
    motion_frames: int = 10,
) -> np.ndarray:
    """FGFA's motion IoU: each box's mean IoU with its own track in frames t-K..t+K, t excluded.

    Args:
        box_video (ndarray): (G,) int video index of each box.
        box_frame_index (ndarray): (G,) int ``frame_idx`` of each box's frame.
        track_ids (ndarray): (G,) int track ids; -1 means no track.
        boxes (ndarray): (G, 4) XYXY boxes.
        motion_frames (int): K.

    Returns:
        ndarray: (G,) float64 motion IoUs; 0 for boxes without another box of their track in reach.
    """
    box_video = np.asarray(box_video)
    box_frame_index = np.asarray(box_frame_index)
    track_ids = np.asarray(track_ids)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    num = len(track_ids)
    iou_sum = np.zeros(num)
    count = np.zeros(num)
    tracked = np.flatnonzero(track_ids >= 0)
    # Sorted by (video, track, frame), a track's boxes within K frames of box i are the next
    # (at most K, frames being distinct) entries, so K shifted comparisons find every pair.
    order = tracked[np.lexsort((box_frame_index[tracked], track_ids[tracked], box_video[tracked]))]
    video, track, frame = box_video[order], track_ids[order], box_frame_index[order]
    same_object = (video[1:] == video[:-1]) & (track[1:] == track[:-1])
    repeated = same_object & (frame[1:] == frame[:-1])
    if repeated.any():
        i = order[np.flatnonzero(repeated)[0]]
        raise ValueError(
            f"Track {track_ids[i]} has two boxes in frame {box_frame_index[i]} of video index "
            f"{box_video[i]}; track ids must be unique within a frame."
        )
    for shift in range(1, motion_frames + 1):
        if shift >= len(order):
            break
        first, second = order[:-shift], order[shift:]
        near = (
            (video[shift:] == video[:-shift])
            & (track[shift:] == track[:-shift])
            & (frame[shift:] - frame[:-shift] <= motion_frames)
        )
        first, second = first[near], second[near]
        ious = inclusive_iou(boxes[first], boxes[second])
        # Each pair is found once and counts for both of its boxes.
        for side in (first, second):
            iou_sum += np.bincount(side, ious, minlength=num)
            count += np.bincount(side, minlength=num)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, iou_sum / count, 0.0)


def motion_bins(motion_iou: np.ndarray) -> np.ndarray:
    """Index into `MOTION_BIN_NAMES` of each motion IoU: slow > 0.9 >= medium >= 0.7 > fast.

    Args:
        motion_iou (ndarray): (G,) motion IoUs.

    Returns:
        ndarray: (G,) int64 in {0: slow, 1: medium, 2: fast}.
    """
    motion_iou = np.asarray(motion_iou)
    return np.where(motion_iou > 0.9, 0, np.where(motion_iou >= 0.7, 1, 2)).astype(np.int64)


def _same_frame_pairs(
    det_frame: np.ndarray, gt_start: np.ndarray, gt_count: np.ndarray
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield chunks of (detection index, GT index) for every detection/GT pair of one frame.

    Pairs come in detection order, then GT order. GT boxes must be sorted by frame.
    """
    counts = gt_count[det_frame]
    ends = np.cumsum(counts)
    start = 0
    while start < len(det_frame):
        done = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, done + _MAX_PAIRS_PER_CHUNK, side="right")), start + 1)
        c = counts[start:stop]
        total = int(c.sum())
        if total:
            det_idx = np.repeat(np.arange(start, stop), c)
            first_pos = np.cumsum(c) - c
            gt_idx = np.repeat(gt_start[det_frame[start:stop]] - first_pos, c) + np.arange(total)
            yield det_idx, gt_idx
        start = stop


def _match(
    gt: FrameGroundTruth,
    det: FrameDetections,
    thresholds: np.ndarray,
    gt_group: np.ndarray,
    num_groups: int,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy devkit matching plus each detection's best IoU (any class) per GT group.

    ``det`` must be sorted by (frame, descending score) and ``gt`` by frame.

    Returns:
        matched (ndarray): (N,) int64 GT index matched by each detection, -1 if none.
        group_max_iou (ndarray): (N, num_groups) best IoU with a GT box of each group, -1 when the
            frame has no GT box of that group.
        best_gt (ndarray): (N,) int64 the GT box (any class) of highest IoU with each
            detection, the first on ties; -1 when it overlaps none.
    """
    num_det = len(det.scores)
    gt_count = np.bincount(gt.box_frame, minlength=gt.num_frames)
    gt_start = np.cumsum(gt_count) - gt_count
    group_max_iou = np.full((num_det, num_groups), -1.0)
    best_gt = np.full(num_det, -1, dtype=np.int64)
    cand_det, cand_gt, cand_iou = [], [], []
    for det_idx, gt_idx in _same_frame_pairs(det.frame, gt_start, gt_count):
        ious = inclusive_iou(det.boxes[det_idx], gt.boxes[gt_idx])
        candidate = (det.classes[det_idx] == gt.classes[gt_idx]) & (ious >= thresholds[gt_idx])
        cand_det.append(det_idx[candidate])
        cand_gt.append(gt_idx[candidate])
        cand_iou.append(ious[candidate])
        # A detection's pairs are contiguous, so a segmented max gives its best IoU per group.
        seg_start = np.flatnonzero(np.r_[True, det_idx[1:] != det_idx[:-1]])
        seg_det = det_idx[seg_start]
        for group in range(num_groups):
            masked = np.where(gt_group[gt_idx] == group, ious, -1.0)
            group_max_iou[seg_det, group] = np.maximum.reduceat(masked, seg_start)
        seg_max = np.maximum.reduceat(ious, seg_start)
        at_max = ious == np.repeat(seg_max, np.diff(np.r_[seg_start, len(ious)]))
        first = np.minimum.reduceat(np.where(at_max, np.arange(len(ious)), len(ious)), seg_start)
        best_gt[seg_det] = np.where(seg_max > 0, gt_idx[first], -1)
    matched = np.full(num_det, -1, dtype=np.int64)
    if not cand_det:
        return matched, group_max_iou, best_gt
    # Only pairs above threshold can match, so the sequential greedy pass is short.
    cand_det = np.concatenate(cand_det).tolist()
    cand_gt = np.concatenate(cand_gt).tolist()
    cand_iou = np.concatenate(cand_iou).tolist()
    taken = set()
    i, num_cand = 0, len(cand_det)
    while i < num_cand:
        d, best, best_iou = cand_det[i], -1, -1.0
        while i < num_cand and cand_det[i] == d:
            # Strict ">" keeps the first GT box on ties, as the devkit does.
            if cand_iou[i] > best_iou and cand_gt[i] not in taken:
                best, best_iou = cand_gt[i], cand_iou[i]
            i += 1
        if best >= 0:
            taken.add(best)
            matched[d] = best
    return matched, group_max_iou, best_gt


def class_aps(
    order: np.ndarray,
    det_classes: np.ndarray,
    tp: np.ndarray,
    fp: np.ndarray,
    num_gt: np.ndarray,
) -> np.ndarray:
    """
    AP of every class from TP/FP weights, for one or several weightings at once.

    Args:
        order (ndarray): (N,) detections grouped by class (ascending), best first in a class.
        det_classes (ndarray): (N,) class of each detection.
        tp, fp (ndarray): (..., N) TP and FP weight of each detection (a leading dimension
            holds several weightings, e.g. bootstrap samples).
        num_gt (ndarray): (..., C) (weighted) number of GT boxes of each class.

    Returns:
        ndarray: (..., C) APs, NaN where a class has no GT.
    """
    num_gt = np.asarray(num_gt, dtype=np.float64)
    num_classes = num_gt.shape[-1]
    aps = np.full(num_gt.shape, np.nan)
    bounds = np.r_[0, np.cumsum(np.bincount(det_classes, minlength=num_classes))]
    for c in range(num_classes):
        rows = order[bounds[c] : bounds[c + 1]]
        has_gt = num_gt[..., c] > 0
        tp_cum = np.cumsum(tp[..., rows], axis=-1)
        fp_cum = np.cumsum(fp[..., rows], axis=-1)
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp_cum / num_gt[..., c, None]
        # voc_ap, vectorised: the area under the precision envelope, step by recall step.
        envelope = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
        steps = np.diff(recall, axis=-1, prepend=0.0)
        aps[..., c] = np.where(has_gt, (steps * envelope).sum(-1), np.nan)
    return aps


def _sorted_for_matching(gt: FrameGroundTruth, det: FrameDetections):
    """GT boxes sorted by frame; detections by (frame, descending score)."""
    gt_order = np.argsort(gt.box_frame, kind="stable")
    box_fields = ("box_frame", "boxes", "classes", "track_ids", "box_conditions")
    gt = dataclasses.replace(gt, **{k: getattr(gt, k)[gt_order] for k in box_fields})
    # lexsort is stable: equal scores keep the input order, like MATLAB's sort in the devkit.
    det_order = np.lexsort((-det.scores, det.frame))
    det = dataclasses.replace(
        det, **{k: getattr(det, k)[det_order] for k in ("frame", "boxes", "scores", "classes")}
    )
    return gt, det


def _check_classes(classes: np.ndarray, num_classes: int, what: str) -> None:
    bad = (classes < 0) | (classes >= num_classes)
    if bad.any():
        raise ValueError(
            f"{what} has class id {int(classes[bad][0])} outside 0..{num_classes - 1} "
            f"({num_classes} classes)."
        )


@dataclass(frozen=True)
class Matching:
    """
    The detections of one run matched to the ground truth once: every AP of
    :func:`evaluate_vid`, and of its bootstrap samples (:mod:`.bootstrap`), is computed from it.

    Attributes:
        gt (FrameGroundTruth): the GT, boxes sorted by frame (G boxes).
        det (FrameDetections): the detections, sorted by (frame, descending score) (N).
        num_classes (int): C.
        matched (ndarray): (N,) GT box matched by each detection (devkit rules), -1 if none.
        best_gt (ndarray): (N,) GT box (any class) each detection overlaps most, -1 if none.
        group_max_iou (ndarray): (N, 3) best IoU of each detection with each motion bin's GT.
        box_bin (ndarray): (G,) motion bin of each GT box.
        order (ndarray): (N,) detections grouped by class, best first: equal scores stay in
            (frame, in-frame) order, as in the devkit's pooled stable sort.
    """

    gt: FrameGroundTruth
    det: FrameDetections
    num_classes: int
    matched: np.ndarray
    best_gt: np.ndarray
    group_max_iou: np.ndarray
    box_bin: np.ndarray
    order: np.ndarray

    def subsets(self) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """
        The GT subsets AP is reported on, with each detection's TP and FP weight there.

        Returns:
            dict: ``"all"`` (the devkit), each of :data:`MOTION_BIN_NAMES` (FGFA's rules) and
            each condition of :func:`.conditions.condition_subsets` -> ((N,) TP weights,
            (N,) FP weights, (G,) bool the GT boxes that count).
        """
        everything = np.ones(len(self.gt), dtype=bool)
        out = {"all": (*self._motion_tp_fp(everything), everything)}
        for b, name in enumerate(MOTION_BIN_NAMES):
            in_bin = self.box_bin == b
            out[name] = (*self._motion_tp_fp(in_bin), in_bin)
        gt = self.gt
        conditions = condition_subsets(
            gt.condition_names, gt.frame_conditions, gt.box_frame, gt.box_conditions
        )
        for name, (in_box, frame_weight) in conditions.items():
            tp_fp = condition_tp_fp(
                self.matched, self.best_gt, self.det.frame, in_box, frame_weight
            )
            out[name] = (*tp_fp, in_box)
        return out

    def class_aps(
        self, tp: np.ndarray, fp: np.ndarray, in_box: np.ndarray, weights=None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """
        Per-class AP of one subset, optionally with every frame weighted (a bootstrap sample).

        Args:
            tp, fp (ndarray): (N,) weights of :meth:`subsets`.
            in_box (ndarray): (G,) the GT boxes that count.
            weights (ndarray or None): (S, F) weight of every frame in S samples.

        Returns:
            tuple[ndarray, ndarray]: APs and (weighted) GT counts, (C,) each, or (S, C) with
            ``weights``.
        """
        classes = self.gt.classes[in_box]
        if weights is None:
            num_gt = np.bincount(classes, minlength=self.num_classes)
            return class_aps(self.order, self.det.classes, tp, fp, num_gt), num_gt
        det_weights = weights[:, self.det.frame]
        box_weights = weights[:, self.gt.box_frame[in_box]]
        num_gt = np.stack([np.bincount(classes, w, self.num_classes) for w in box_weights])
        aps = class_aps(self.order, self.det.classes, tp * det_weights, fp * det_weights, num_gt)
        return aps, num_gt

    def _motion_tp_fp(self, in_bin: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return _tp_fp_weights(
            self.gt, self.det, self.matched, self.group_max_iou, self.box_bin, in_bin
        )


def match_detections(
    gt: FrameGroundTruth,
    det: FrameDetections,
    num_classes: int,
    *,
    motion_frames: int = 10,
    iou_threshold: float = 0.5,
    pixel_tolerance: float = 10.0,
) -> Matching:
    """
    Match detections to the ground truth with the devkit's rules (module docstring).

    Args: as :func:`evaluate_vid`.

    Returns:
        Matching: what every AP is computed from.
    """
    _check_classes(gt.classes, num_classes, "Ground truth")
    _check_classes(det.classes, num_classes, "Detections")
    gt, det = _sorted_for_matching(gt, det)
    thresholds = small_object_thresholds(gt.boxes, iou_threshold, pixel_tolerance)
    box_bin = motion_bins(
        motion_ious(
            gt.frame_video[gt.box_frame],
            gt.frame_index[gt.box_frame],
            gt.track_ids,
            gt.boxes,
            motion_frames,
        )
    )
    matched, group_max_iou, best_gt = _match(gt, det, thresholds, box_bin, len(MOTION_BIN_NAMES))
    order = np.lexsort((-det.scores, det.classes))
    return Matching(gt, det, num_classes, matched, best_gt, group_max_iou, box_bin, order)


def evaluate_vid(
    gt: FrameGroundTruth,
    det: FrameDetections,
    num_classes: int,
    *,
    motion_frames: int = 10,
    iou_threshold: float = 0.5,
    pixel_tolerance: float = 10.0,
) -> VIDMetrics:
    """ImageNet VID devkit AP per class, FGFA motion-bin APs and, where the GT has conditions,
    the AP of each condition (see the module docstring).

    Args:
        gt (FrameGroundTruth): GT of all evaluated frames (frames without GT included).
        det (FrameDetections): detections on those frames, in any order.
        num_classes (int): C.
        motion_frames (int): K of the motion IoU (frames on either side).
        iou_threshold (float): IoU threshold for objects large enough (0.5 in the devkit).
        pixel_tolerance (float): small-object slack in pixels (10 in the devkit).

    Returns:
        VIDMetrics: overall, per-motion-bin and per-condition APs per class.
    """
    matching = match_detections(
        gt, det, num_classes, motion_frames=motion_frames, iou_threshold=iou_threshold,
        pixel_tolerance=pixel_tolerance,
    )  # fmt: skip
    aps = {name: matching.class_aps(*subset) for name, subset in matching.subsets().items()}
    class_ap, class_num_gt = aps.pop("all")
    motion = {name: aps.pop(name) for name in MOTION_BIN_NAMES}
    return VIDMetrics(
        class_ap,
        class_num_gt,
        {name: ap for name, (ap, _) in motion.items()},
        {name: n for name, (_, n) in motion.items()},
        {name: ap for name, (ap, _) in aps.items()},
        {name: n for name, (_, n) in aps.items()},
    )


def _tp_fp_weights(
    gt: FrameGroundTruth,
    det: FrameDetections,
    matched: np.ndarray,
    group_max_iou: np.ndarray,
    box_bin: np.ndarray,
    in_bin: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray]:
    """TP and FP weight of every detection when only the GT in ``in_bin`` counts (FGFA's rules).

    Args:
        matched (ndarray): (N,) GT index matched by each detection, -1 if none.
        group_max_iou (ndarray): (N, B) best IoU of each detection with the GT of each motion bin.
        box_bin (ndarray): (G,) motion bin of each GT box.
        in_bin (ndarray): (G,) bool, the GT that counts; the rest is ignored.

    Returns:
        tuple[ndarray, ndarray]: (N,) TP weights and (N,) FP weights.
    """
    counted_groups = np.zeros(group_max_iou.shape[1], dtype=bool)
    counted_groups[box_bin[in_bin]] = True
    in_max = np.max(group_max_iou[:, counted_groups], axis=1, initial=-1.0)
    out_max = np.max(group_max_iou[:, ~counted_groups], axis=1, initial=-1.0)
    is_matched = matched >= 0
    tp = np.zeros(len(matched))
    tp[is_matched] = in_bin[matched[is_matched]]
    frame_gt = np.bincount(gt.box_frame, minlength=gt.num_frames)
    frame_ignored = np.bincount(
        gt.box_frame, weights=(~in_bin).astype(np.float64), minlength=gt.num_frames
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ignored_share = frame_ignored / frame_gt
    # Ties (no overlap with anything) get FGFA's fractional weights, see the module docstring.
    unmatched_fp = np.select(
        [in_max > out_max, out_max > in_max, frame_gt[det.frame] == 0],
        [1.0, 0.0, float(in_bin.mean()) if len(in_bin) else 1.0],
        default=ignored_share[det.frame],
    )
    return tp, np.where(is_matched, 0.0, unmatched_fp)


def coco_ap(
    gt: FrameGroundTruth,
    det: FrameDetections,
    num_classes: int,
    *,
    cocoeval_cls=COCOeval,
) -> Dict[str, float]:
    """COCO AP, AP50, AP75 (percent) through pycocotools on the same frames.

    Args:
        gt (FrameGroundTruth): GT of all evaluated frames.
        det (FrameDetections): detections on those frames.
        num_classes (int): C.
        cocoeval_cls: ``pycocotools.cocoeval.COCOeval`` or a drop-in replacement such as
            detectron2's faster ``COCOeval_opt``.

    Returns:
        dict[str, float]: "AP", "AP50", "AP75"; NaN when there is no GT, 0 when no detection.
    """
    if len(gt.boxes) == 0:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if len(det.scores) == 0:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    image_ids = gt.image_ids.astype(np.int64)
    xywh = gt.boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": [
            {"id": int(i), "height": int(h), "width": int(w)}
            for i, h, w in zip(image_ids, gt.heights, gt.widths)
        ],
        # Category and annotation ids start at 1: pycocotools treats a matched GT id 0 as "none".
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": int(image_ids[f]),
                "category_id": int(c) + 1,
                "bbox": box.tolist(),
                "area": float(box[2] * box[3]),
                "iscrowd": 0,
            }
            for k, (f, c, box) in enumerate(zip(gt.box_frame, gt.classes, xywh))
        ],
    }
    det_xywh = det.boxes.copy()
    det_xywh[:, 2:] -= det_xywh[:, :2]
    results = np.column_stack([image_ids[det.frame], det_xywh, det.scores, det.classes + 1]).astype(
        np.float64
    )
    # pycocotools prints progress on stdout; keep it out of the training log.
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        coco_eval = cocoeval_cls(coco_gt, coco_dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("pycocotools summary:\n%s", captured.getvalue())
    stats = [float(s) * 100.0 if s >= 0 else float("nan") for s in coco_eval.stats[:3]]
    return dict(zip(("AP", "AP50", "AP75"), stats))
