"""VID evaluation: the ImageNet VID devkit mAP, FGFA motion-speed mAP, AP by condition, COCO AP,
and paired differences with a video-level bootstrap interval."""

from .bootstrap import PairedDifference, paired_bootstrap
from .vid_evaluation import (
    MOTION_BIN_NAMES,
    FrameDetections,
    FrameGroundTruth,
    Matching,
    VIDMetrics,
    coco_ap,
    evaluate_vid,
    inclusive_iou,
    match_detections,
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
    "Matching",
    "PairedDifference",
    "VIDEvaluator",
    "VIDMetrics",
    "coco_ap",
    "evaluate_vid",
    "ground_truth_from_records",
    "match_detections",
    "paired_bootstrap",
    "inclusive_iou",
    "motion_bins",
    "motion_ious",
    "small_object_thresholds",
    "voc_ap",
]
