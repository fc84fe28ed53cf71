"""
Helpers of the export tests (importable as ``_export_helpers`` from ``tests/export``): the
methods at the tests' size, a short synthetic validation video, eager and exported detections
and their comparison.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from _testing import fill_by_name, seeded_model, synthetic_cfg

from vod_d2 import make_online
from vod_d2.modeling.temporal.gate import Gate

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = REPO_ROOT / "vod_d2" / "export" / "runtime.py"
# Scale of the random weights: large enough that every temporal module's state moves the
# detections beyond the tolerances (each method's test checks it), small enough to keep them.
WEIGHT_SCALE = 0.15
# The tolerances: boxes in pixels, scores.
BOX_TOL, SCORE_TOL = 1e-3, 1e-4


def load_runtime():
    """vod_d2/export/runtime.py as a module of its own (as an export folder's run.py is)."""
    spec = importlib.util.spec_from_file_location("vod_d2_export_runtime", RUNTIME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def causal_cfg(name, **opts):
    """``configs/synthetic/{name}.yaml`` at the tests' size, as its causal variant."""
    cfg = synthetic_cfg(name, **opts)
    make_online(cfg)
    return cfg


def method_model(name, **opts):
    """
    The causal variant of a synthetic config, random weights at :data:`WEIGHT_SCALE` and every
    residual gate open (the paper's module: a random gate opening, as the default scheduled
    gate's buffer would get, may be anything, negative included).
    """
    cfg = causal_cfg(name, **opts)
    model = fill_by_name(seeded_model(cfg), scale=WEIGHT_SCALE).eval()
    for module in model.modules():
        if isinstance(module, Gate):
            module.fix_opening(1.0)
    return cfg, model


def validation_frames(cfg, num_frames):
    """The first ``num_frames`` test inputs of the first synthetic validation video."""
    from vod_d2.data import build_video_test_loader

    frames = []
    for (frame,) in build_video_test_loader(cfg, "synthetic_vid_val"):
        if frames and frame["video_id"] != frames[0]["video_id"]:
            break
        frames.append(frame)
        if len(frames) == num_frames:
            break
    return frames


def eager_detections(model, frames, alone=False):
    """
    ``model.step`` on each frame of a video of unknown length: (boxes, scores, classes) numpy
    arrays per frame, in the frames' output size. ``alone``: each frame as a video of its own.
    """
    results = []
    with torch.no_grad():
        model.reset(None)
        for frame in frames:
            if alone:
                model.reset(None)
            ((_, output),) = model.step(frame)
            instances = output["instances"]
            results.append(
                (
                    instances.pred_boxes.tensor.numpy(),
                    instances.scores.numpy(),
                    instances.pred_classes.numpy(),
                )
            )
    return results


def support_slots(step):
    """The support-slot draws of an online SparseVOD step, as its runner makes them (or None)."""
    if not step.extra_inputs:
        return None
    return load_runtime().ReservoirSlots(step.num_support, step.support_seed)


def stream_step(step_fn, state, frames, slots=None):
    """
    Frames through an exported step (any callable with the step's signature), post-processed
    as the runner does: (boxes, scores, classes) per frame.
    """
    runtime = load_runtime()
    results = []
    with torch.no_grad():
        for frame in frames:
            extra = [torch.tensor(slots.next_slot())] if slots is not None else []
            boxes, scores, classes, count, *state = step_fn(frame["image"], *extra, *state)
            size = tuple(frame["image"].shape[1:])
            output = (frame["height"], frame["width"])
            results.append(runtime.postprocess(boxes, scores, classes, count, size, output))
    return results


def compare(expected, actual, box_tol=BOX_TOL, score_tol=SCORE_TOL):
    """
    Match two videos' detections frame by frame: each expected detection to an unmatched
    actual one of its class within the tolerances (equal scores may come in either order).
    Boxes thinner than ``box_tol`` are left out on both sides: within the tolerance of no box,
    which the post-processing drops (a box clipped to a sliver of float noise).

    Returns:
        (str or None, float, float): the first mismatch (None: every frame matches), and the
        largest box and score differences of the matches.
    """
    worst_box = worst_score = 0.0
    expected = [_without_slivers(d, box_tol) for d in expected]
    actual = [_without_slivers(d, box_tol) for d in actual]
    for t, ((boxes, scores, classes), (a_boxes, a_scores, a_classes)) in enumerate(
        zip(expected, actual)
    ):
        if len(boxes) != len(a_boxes):
            return f"frame {t}: {len(boxes)} detections, got {len(a_boxes)}", worst_box, worst_score
        free = np.ones(len(a_boxes), dtype=bool)
        for box, score, cls in zip(boxes, scores, classes):
            box_diff = np.abs(a_boxes - box).max(axis=1) if len(a_boxes) else np.zeros(0)
            score_diff = np.abs(a_scores - score)
            fits = free & (a_classes == cls) & (box_diff <= box_tol) & (score_diff <= score_tol)
            if not fits.any():
                return (
                    f"frame {t}: no match for class {cls} score {score:.6f} box {box.tolist()}",
                    worst_box,
                    worst_score,
                )
            j = int(np.flatnonzero(fits)[np.argmin(box_diff[fits])])
            free[j] = False
            worst_box = max(worst_box, float(box_diff[j]))
            worst_score = max(worst_score, float(score_diff[j]))
    return None, worst_box, worst_score


def _without_slivers(detections, size):
    boxes, scores, classes = detections
    keep = ((boxes[:, 2] - boxes[:, 0]) > size) & ((boxes[:, 3] - boxes[:, 1]) > size)
    return boxes[keep], scores[keep], classes[keep]
