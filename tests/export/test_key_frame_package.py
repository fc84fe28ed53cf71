"""
The AOTInductor package of a key-frame step (DFF: a torch.cond between the backbone and the
flow warp) gives the eager detections: the second and last package the test suite compiles
(about 1-2 minutes here), for what the window step's package does not cover, the cond.
"""

import torch
from _export_helpers import (
    compare,
    eager_detections,
    load_runtime,
    method_model,
    stream_step,
    validation_frames,
)

from vod_d2.export import export_model


def test_the_dff_package_gives_the_eager_detections(tmp_path, synthetic_datasets):
    cfg, model = method_model("dff")
    frames = validation_frames(cfg, 12)  # key frames 0 and 10
    description = export_model(cfg, str(tmp_path), model=model, frame_size=(64, 80), onnx="off")
    assert description["frame"]["fixed_size"] == [64, 80]
    step = load_runtime().ExportedStep(str(tmp_path))
    got = stream_step(step, step.reset(frames[0]["image"]), frames)
    mismatch, box_diff, score_diff = compare(eager_detections(model, frames), got)
    assert mismatch is None, mismatch
    print(f"DFF package: max box difference {box_diff:.2e} px, score {score_diff:.2e}")
    # The key frame's state is the package's own output, not an input passed through.
    with torch.no_grad():
        state = step.reset(frames[0]["image"])
        *_, index, task, image = step(frames[0]["image"], *state)
    assert int(index) == 1 and task.abs().sum() > 0 and image.abs().sum() > 0
