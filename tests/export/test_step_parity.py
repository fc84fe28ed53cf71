"""
Every method of configs/synthetic/ (offline ones as their causal variant): its exported step,
run frame by frame over a synthetic validation video, gives the eager model's detections.

The step is traced by ``torch.export`` and run as the exported program (the AOTInductor package
of one method is tested in test_package.py: compiling one takes minutes). For the methods with
state, the test also checks that the state matters: the same frames detected each as a video
of its own give other detections, so that a step that lost its state would fail.
"""

import pytest
import torch
from _export_helpers import (
    compare,
    eager_detections,
    method_model,
    stream_step,
    support_slots,
    validation_frames,
)

from vod_d2.export import build_streaming_step, trace_step

# config -> frames streamed: enough for every state to fill and be read (a window of 8
# frames for STMN, two key frames for LSTS/Impression/DFF, a full support sample for SparseVOD).
METHODS = {
    "rfcn": 3,
    "single_frame": 3,
    "single_frame_fpn": 3,
    "sparse_rcnn": 3,
    "ssn": 3,
    "ssn_rfcn": 3,
    "stsn": 6,
    "stsn_rfcn": 6,
    "stsn_fpn": 6,
    "stmn": 10,
    "stmn_rfcn": 10,
    "lsts": 12,
    "impression": 12,
    "dff": 12,
    "sparsevod": 6,
}
STATELESS = ("rfcn", "single_frame", "single_frame_fpn", "sparse_rcnn", "ssn", "ssn_rfcn")
# Variants the synthetic configs leave out: MatchTrans aligning over a 3x3 window (the synthetic
# STMNs' k = 0 window of one cell makes it the identity).
VARIANTS = {"stmn_rfcn-matchtrans3x3": ("stmn_rfcn", {"MODEL.STMN.MATCHTRANS.K": 1})}


def test_every_synthetic_config_is_covered():
    from pathlib import Path

    names = {p.stem for p in Path("configs/synthetic").glob("*.yaml")} - {"Base-synthetic"}
    assert names == set(METHODS)


@pytest.mark.parametrize("case", sorted(METHODS) + sorted(VARIANTS))
def test_exported_step_gives_the_eager_detections(case, synthetic_datasets):
    name, opts = VARIANTS.get(case, (case, {}))
    cfg, model = method_model(name, **opts)
    frames = validation_frames(cfg, METHODS[name])
    assert len(frames) == METHODS[name]
    expected = eager_detections(model, frames)
    assert sum(len(scores) for _, scores, _ in expected) > 0, "nothing detected: a vacuous test"

    step = build_streaming_step(model).eval()
    size = tuple(frames[0]["image"].shape[1:])
    program = trace_step(step, size, dynamic=False).step.module()
    got = stream_step(program, step.initial_state(*size), frames, support_slots(step))
    mismatch, box_diff, score_diff = compare(expected, got)
    assert mismatch is None, mismatch
    print(f"{case}: max box difference {box_diff:.2e} px, score {score_diff:.2e}")

    if name not in STATELESS:
        alone = eager_detections(model, frames, alone=True)
        assert compare(expected, alone)[0] is not None, "the state moves no detection"


def test_the_step_runs_eagerly_as_exported(synthetic_datasets):
    # The step module itself (no export) streams the same detections: the graph adds nothing.
    cfg, model = method_model("stmn_rfcn")
    frames = validation_frames(cfg, 4)
    step = build_streaming_step(model).eval()
    size = tuple(frames[0]["image"].shape[1:])
    got = stream_step(step, step.initial_state(*size), frames)
    assert compare(eager_detections(model, frames), got)[0] is None


def test_state_shapes_follow_the_frame_size():
    # The state of a window of STMN's 8 past frames: features and forward projections of the
    # aggregated map at stride 16, and the slots' frame indices.
    _, model = method_model("stmn_rfcn")
    step = build_streaming_step(model)
    state = {s.name: s for s in step.state(64, 80)}
    assert state["window.res5.feature"].shape == (8, 256, 4, 5)
    assert state["window.res5.forward_projection"].shape == (8, 3 * 128, 4, 5)
    assert state["window.frames"].shape == (8,) and state["window.frames"].dtype == torch.int64
    assert state["window.frames"].fill == -1
    bigger = {s.name: s.shape for s in step.state(96, 128)}
    assert bigger["window.res5.feature"] == (8, 256, 6, 8)
