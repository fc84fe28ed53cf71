"""VID evaluation: the ImageNet VID devkit mAP, FGFA motion-speed mAP and COCO AP."""

from .vid_evaluation import (
    MOTION_BIN_NAMES,
    FrameDetections,
    FrameGroundTruth,
    VIDMetrics,
    coco_ap,
    evaluate_vid,
    inclusive_iou,
    motion_bins,
    motion_ious,
    small_object_thresholds,
    voc_ap,
)
from .vid_evaluator import VIDEvaluator, ground_truth_from_records

__all__ = [
    "MOTION_BIN_NAMES",
    "FrameDetections",
    "FrameGroundTruth",
    "VIDEvaluator",
    "VIDMetrics",
    "coco_ap",
    "evaluate_vid",
    "ground_truth_from_records",
    "inclusive_iou",
    "motion_bins",
    "motion_ious",
    "small_object_thresholds",
    "voc_ap",
]
