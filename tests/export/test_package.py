"""
The README's export command on one method, STMN on R-FCN (state, vod_d2's MatchTrans ops,
torchvision's PS RoIAlign and NMS), and its outputs: the AOTInductor package run in a fresh
process that never imports vod_d2 (only its op library), the ONNX model run by onnxruntime,
the folder's run.py on a video file, the demo's --exported, and the one-line refusals of a
wrong state or frame.

The package is compiled once for the module (minutes on 2 cores: the test suite compiles no
other).
"""

import importlib.util
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from _export_helpers import (
    REPO_ROOT,
    compare,
    eager_detections,
    load_runtime,
    method_model,
    validation_frames,
)

METHOD = "stmn_rfcn"
# The tests' size of synthetic_cfg, on the command line.
SIZE_OPTS = ["INPUT.MIN_SIZE_TEST", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]
NUM_FRAMES = 10
# The ONNX export's packages (requirements-dev.txt); without them the ONNX test skips.
ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_datasets):
    """(export folder, eager model, its config): the command run on random weights."""
    folder = tmp_path_factory.mktemp("exported")
    cfg, model = method_model(METHOD)
    weights = folder / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    output = folder / METHOD
    command = [
        sys.executable,
        "tools/export_model.py",
        "--config-file",
        f"configs/synthetic/{METHOD}.yaml",
        "--output",
        str(output),
        "--frame-size",
        "64",
        "80",
        "--onnx",
        "on" if ONNX else "off",
        "MODEL.WEIGHTS",
        str(weights),
        *SIZE_OPTS,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "causal variant: MODEL.VIDEO.TEST_WINDOW [2, 2] -> [4, 0]" in done.stdout
    return output, model, cfg


def test_the_folder_describes_the_step(exported):
    output, _, _ = exported
    description = json.loads((output / "export.json").read_text())
    files = {"step.pt2", "export.json", "run.py"} | ({"step.onnx"} if ONNX else set())
    assert {p.name for p in output.iterdir()} >= files
    state = {s["name"]: s for s in description["state"]}
    assert list(state) == ["window.res5.feature", "window.res5.forward_projection", "window.frames"]
    assert state["window.res5.feature"]["shape"] == [8, 256, 4, 5]
    assert state["window.frames"] == {
        **state["window.frames"],
        "shape": [8],
        "dtype": "int64",
        "fill": -1,
    }
    # The map's height and width follow the frame's at stride 16.
    assert state["window.res5.feature"]["follows_frame"] == [
        {"dim": 2, "of": "H", "stride": 16},
        {"dim": 3, "of": "W", "stride": 16},
    ]
    assert description["frame"]["fixed_size"] is None
    assert description["uses_op_library"]
    assert [o["name"] for o in description["outputs"]] == ["boxes", "scores", "classes", "count"]


_FRESH_PROCESS = """
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("run", sys.argv[1] + "/run.py")
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
step = run.ExportedStep(sys.argv[1])
images = torch.load(sys.argv[2])
state = step.reset(images[0])
results = []
for image in images:
    boxes, scores, classes, count, *state = step(image, *state)
    size = tuple(image.shape[1:])
    results.append([a.tolist() for a in run.postprocess(boxes, scores, classes, count, size, size)])
json.dump({"results": results, "modules": sorted(sys.modules)}, open(sys.argv[3], "w"))
"""


def _run_fresh(output, images, tmp_path):
    torch.save(images, tmp_path / "images.pt")
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS)
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(script), str(output), str(tmp_path / "images.pt"), str(result)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(result.read_text())
    results = [
        (np.array(b, dtype="f4").reshape(-1, 4), np.array(s, dtype="f4"), np.array(c, dtype="i8"))
        for b, s, c in data["results"]
    ]
    return results, data["modules"]


def test_the_package_runs_without_vod_d2_and_gives_the_eager_detections(exported, tmp_path):
    output, model, cfg = exported
    frames = validation_frames(cfg, NUM_FRAMES)
    results, modules = _run_fresh(output, [f["image"] for f in frames], tmp_path)
    assert not [m for m in modules if m.split(".")[0] == "vod_d2"], modules
    mismatch, box_diff, score_diff = compare(eager_detections(model, frames), results)
    assert mismatch is None, mismatch
    print(f"AOTInductor package: max box difference {box_diff:.2e} px, score {score_diff:.2e}")


def test_the_package_takes_another_frame_size(exported, tmp_path):
    # 96 x 128 frames: the package was traced on 64 x 80 ones, its size is symbolic.
    output, model, _ = exported
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g) for _ in range(3)]
    frames = [{"image": i, "height": 96, "width": 128} for i in images]
    results, _ = _run_fresh(output, images, tmp_path)
    assert compare(eager_detections(model, frames), results)[0] is None


@pytest.mark.skipif(not ONNX, reason="needs onnx, onnxscript and onnxruntime")
def test_the_onnx_model_gives_the_eager_detections(exported):
    output, model, cfg = exported
    runtime = load_runtime()
    step = runtime.ExportedStep(str(output), backend="onnx")
    frames = validation_frames(cfg, NUM_FRAMES)
    state = step.reset(frames[0]["image"])
    got = []
    for frame in frames:
        boxes, scores, classes, count, *state = step(frame["image"], *state)
        got.append(runtime.postprocess(boxes, scores, classes, count, (64, 80), (64, 80)))
    # ONNX runs MatchTrans's references and R-FCN's pooling from RoIAlign: the same values
    # within the tolerances.
    mismatch, box_diff, score_diff = compare(eager_detections(model, frames), got)
    assert mismatch is None, mismatch
    print(f"ONNX: max box difference {box_diff:.2e} px, score {score_diff:.2e}")


def test_a_wrong_state_or_frame_is_refused_in_one_line(exported):
    output, _, _ = exported
    runtime = load_runtime()
    step = runtime.ExportedStep(str(output))
    image = torch.zeros((3, 64, 80), dtype=torch.uint8)
    state = step.reset(image)
    state[0] = torch.zeros(7, 256, 4, 5)
    with pytest.raises(runtime.InputError) as info:
        step(image, *state)
    assert str(info.value) == (
        "window.res5.feature: expected shape (8, 256, 4, 5) for (64, 80) frames, got (7, 256, 4, 5)"
    )
    # A frame of another size than the state's.
    state = step.reset(image)
    with pytest.raises(runtime.InputError) as info:
        step(torch.zeros((3, 96, 128), dtype=torch.uint8), *state)
    assert str(info.value) == (
        "window.res5.feature: expected shape (8, 256, 6, 8) for (96, 128) frames, got "
        "(8, 256, 4, 5)"
    )
    with pytest.raises(runtime.InputError, match=r"^window.frames: expected dtype int64"):
        step(image, *state[:-1], state[-1].float())


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 64))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_run_py_and_the_demo_stream_a_video_file(exported, tmp_path):
    output, model, cfg = exported
    frames = [f["image"].permute(1, 2, 0).numpy() for f in validation_frames(cfg, 6)]
    video = tmp_path / "clip.avi"
    _write_video(video, frames)
    decoded = []
    capture = cv2.VideoCapture(str(video))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    assert len(decoded) == 6
    inputs = [
        {"image": torch.as_tensor(f.transpose(2, 0, 1).copy()), "height": 64, "width": 80}
        for f in decoded
    ]
    expected = eager_detections(model, inputs)

    done = subprocess.run(
        [
            sys.executable,
            str(output / "run.py"),
            "--video-input",
            str(video),
            "--json",
            str(tmp_path / "run.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads((tmp_path / "run.json").read_text())
    assert len(records) == sum(len(s) for _, s, _ in expected)
    for t, (boxes, scores, _) in enumerate(expected):
        mine = sorted(r["score"] for r in records if r["frame_idx"] == t)
        np.testing.assert_allclose(mine, sorted(scores.tolist()), atol=1e-4)

    demo = [
        sys.executable,
        "demo/demo.py",
        "--exported",
        str(output),
        "--video-input",
        str(video),
        "--output",
        str(tmp_path / "annotated.mp4"),
        "--json",
        str(tmp_path / "demo.json"),
        "--confidence-threshold",
        "0.0",
    ]
    done = subprocess.run(demo, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "annotated.mp4").stat().st_size > 0
    results = json.loads((tmp_path / "demo.json").read_text())
    assert len(results) == len(records)
    assert sorted(r["score"] for r in results) == pytest.approx(
        sorted(r["score"] for r in records), abs=1e-4
    )


def test_the_demo_refuses_options_the_export_fixed(exported, tmp_path):
    output, _, _ = exported
    command = [
        sys.executable,
        "demo/demo.py",
        "--exported",
        str(output),
        "--video-input",
        "x.mp4",
        "--json",
        str(tmp_path / "d.json"),
        "--seq-nms",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert "--seq-nms: not with --exported" in done.stderr
