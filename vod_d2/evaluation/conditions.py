"""
AP by the condition the ground truth was seen in: clean, motion-blurred, defocused, occluded.

Video detectors exist to recover what a single frame loses, and on most data the clean boxes
dominate the overall mAP, so a gain on the hard boxes does not show in it. Where a dataset says
in what condition each GT box was seen, :func:`evaluate_vid <.vid_evaluation.evaluate_vid>`
also reports AP per condition:

* a frame's tags (``FrameGroundTruth.frame_conditions``: the ``conditions`` of its record, e.g.
  ``motion_blur`` and ``defocus`` in vod_d2's synthetic data, or a CocoVID image's
  ``conditions`` list) hold for every box of the frame;
* an object's own condition, ``occluded`` (ImageNet VID's ``<occluded>``, a CocoVID
  annotation's ``occluded`` or ``visibility`` below 0.5, the synthetic objects under half
  visible);
* ``degraded``: any of them; ``clean``: none.

For one condition only its GT counts. The rest is ignored as FGFA ignores the GT outside a
motion bin: a detection matched to an ignored box is neither TP nor FP, and ignored boxes are
not in the recall's denominator. An unmatched detection is an FP of weight 1 when the GT box it
overlaps most (any class) is in the condition, 0 when that box is ignored, and, when it
overlaps no GT box, of weight the share of its frame's GT in the condition (for a frame without
GT: 1 if the frame's own tags put it in the condition, else 0). A background detection in a
blurred frame is thus an FP of the blur condition and not of the clean one. These rules are
vod_d2's: no published number uses them (FGFA's motion bins weigh such a detection by the share
of *ignored* GT, kept there for comparability).
"""

from typing import Dict, Sequence, Tuple

import numpy as np

__all__ = ["CLEAN", "DEGRADED", "condition_subsets", "condition_tp_fp"]

CLEAN = "clean"
DEGRADED = "degraded"


def condition_subsets(
    names: Sequence[str],
    frame_conditions: np.ndarray,
    box_frame: np.ndarray,
    box_conditions: np.ndarray,
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """
    The GT of each condition, and the weight of a background detection in each frame.

    Args:
        names: the K condition names.
        frame_conditions (ndarray): (F, K) bool, the conditions of each whole frame.
        box_frame (ndarray): (G,) frame of each GT box.
        box_conditions (ndarray): (G, K) bool, the conditions each box was seen in.

    Returns:
        dict: ``clean``, each of ``names``, ``degraded`` (in that order; empty without
        conditions) -> ((G,) bool the boxes in the condition, (F,) float64 the FP weight of a
        detection that overlaps no GT box, per frame).
    """
    if not len(names):
        return {}
    num_frames = len(frame_conditions)
    any_box, any_frame = box_conditions.any(axis=1), frame_conditions.any(axis=1)
    subsets = [(CLEAN, ~any_box, ~any_frame)]
    subsets += [
        (name, box_conditions[:, k], frame_conditions[:, k]) for k, name in enumerate(names)
    ]
    subsets.append((DEGRADED, any_box, any_frame))
    gt_count = np.bincount(box_frame, minlength=num_frames)
    out = {}
    for name, in_box, frame_value in subsets:
        in_frame = np.bincount(box_frame, weights=in_box, minlength=num_frames)
        share = in_frame / np.maximum(gt_count, 1)
        out[name] = (in_box, np.where(gt_count > 0, share, frame_value.astype(np.float64)))
    return out


def condition_tp_fp(
    matched: np.ndarray,
    best_gt: np.ndarray,
    det_frame: np.ndarray,
    in_box: np.ndarray,
    frame_weight: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    TP and FP weight of every detection when only the GT in ``in_box`` counts (module doc).

    Args:
        matched (ndarray): (N,) GT box matched by each detection, -1 if none.
        best_gt (ndarray): (N,) the GT box (any class) each detection overlaps most, -1 if none.
        det_frame (ndarray): (N,) frame of each detection.
        in_box (ndarray): (G,) bool, the GT in the condition.
        frame_weight (ndarray): (F,) FP weight of a detection overlapping no GT, per frame.

    Returns:
        tuple[ndarray, ndarray]: (N,) TP and (N,) FP weights.
    """
    is_matched = matched >= 0
    tp = np.zeros(len(matched))
    tp[is_matched] = in_box[matched[is_matched]]
    overlapping = in_box[np.maximum(best_gt, 0)] if len(in_box) else np.zeros(len(matched), bool)
    unmatched_fp = np.where(best_gt >= 0, overlapping, frame_weight[det_frame])
    return tp, np.where(is_matched, 0.0, unmatched_fp)
