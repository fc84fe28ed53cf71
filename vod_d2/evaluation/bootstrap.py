"""
Paired differences of mAP between two detectors, with a video-level bootstrap interval.

Two methods are compared run by run: run i of the method and run i of its baseline share a
seed (and whatever else the protocol pairs), and the difference of their mAPs is averaged over
the pairs. The interval comes from resampling the **videos** of the evaluation set with
replacement: frames of one video are not independent (one track fills many frames), so a
frame-level resampling would give intervals far too narrow. Every bootstrap sample reweights
the same video draw for all runs and both methods, so the interval is that of the mean paired
difference, not of each mAP alone. Matching is done once per run (:func:`~.vid_evaluation.
match_detections`); a sample only reweights each frame's detections and GT by how many times
its video was drawn, which is exactly evaluating the resampled set (matching is per frame).
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from .vid_evaluation import (
    MOTION_BIN_NAMES,
    FrameDetections,
    FrameGroundTruth,
    match_detections,
    mean_over_classes,
)

__all__ = ["PairedDifference", "paired_bootstrap"]

# Bootstrap samples evaluated at once (memory: a few (chunk, N) float64 arrays).
_CHUNK = 50


@dataclass(frozen=True)
class PairedDifference:
    """
    mAP of a method against its baseline on one subset of the GT (percent).

    Attributes:
        method (list[float]): the method's mAP in each run.
        baseline (list[float]): the baseline's mAP in each paired run.
        mean (float): the mean over runs of method - baseline.
        low, high (float): the bootstrap interval of ``mean`` at the requested confidence.
        samples (int): bootstrap samples drawn.
    """

    method: List[float]
    baseline: List[float]
    mean: float
    low: float
    high: float
    samples: int


def paired_bootstrap(
    gt: FrameGroundTruth,
    runs: Sequence[FrameDetections],
    baselines: Sequence[FrameDetections],
    num_classes: int,
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    motion_frames: int = 10,
) -> Dict[str, PairedDifference]:
    """
    The mean paired mAP difference of ``runs`` against ``baselines`` on every GT subset, with a
    percentile interval over ``samples`` video-level bootstrap samples.

    Args:
        gt (FrameGroundTruth): the evaluation set.
        runs, baselines: detections of the method's and of the baseline's runs; run i pairs
            with baseline i (e.g. the same seed).
        num_classes (int): C.
        samples (int): bootstrap samples (0: no interval; low and high are NaN).
        confidence (float): coverage of the interval, e.g. 0.95.
        seed (int): seed of the video draws: the same seed gives the same interval.
        motion_frames (int): K of the motion bins.

    Returns:
        dict: subset name (``"all"``, the motion bins, and the conditions of
        :mod:`.conditions` when the GT has them) -> :class:`PairedDifference`. Motion bins get
        no interval (NaN): they are reported as point differences only.
    """
    if not runs or len(runs) != len(baselines):
        raise ValueError(
            f"paired_bootstrap needs as many baseline runs as method runs, got {len(runs)} and "
            f"{len(baselines)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    num_videos = int(gt.frame_video.max()) + 1 if gt.num_frames else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_videos, size=(samples, num_videos))
    counts = np.stack([np.bincount(d, minlength=num_videos) for d in draws]) if samples else None
    point: Dict[str, List[List[float]]] = {}
    sampled: Dict[str, List[np.ndarray]] = {}
    for detections in [*runs, *baselines]:
        matching = match_detections(gt, detections, num_classes, motion_frames=motion_frames)
        frame_video = matching.gt.frame_video
        for name, (tp, fp, in_box) in matching.subsets().items():
            aps, _ = matching.class_aps(tp, fp, in_box)
            point.setdefault(name, []).append(100.0 * float(mean_over_classes(aps)))
            if name in MOTION_BIN_NAMES or counts is None:
                continue
            maps = [
                mean_over_classes(matching.class_aps(tp, fp, in_box, weights=chunk)[0])
                for chunk in np.split(counts[:, frame_video], range(_CHUNK, samples, _CHUNK))
            ]
            sampled.setdefault(name, []).append(100.0 * np.concatenate(maps))
    pairs = len(runs)
    out = {}
    for name, maps in point.items():
        method, baseline = maps[:pairs], maps[pairs:]
        mean = float(np.mean(np.subtract(method, baseline)))
        low = high = float("nan")
        if name in sampled:
            values = sampled[name]
            diffs = np.mean(np.subtract(values[:pairs], values[pairs:]), axis=0)
            diffs = diffs[~np.isnan(diffs)]
            tail = 100.0 * (1.0 - confidence) / 2.0
            if len(diffs):
                low, high = (float(v) for v in np.percentile(diffs, [tail, 100.0 - tail]))
        out[name] = PairedDifference(method, baseline, mean, low, high, samples)
    return out
