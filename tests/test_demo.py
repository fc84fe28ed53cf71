import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _testing import read_video
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import vod_d2.data.datasets.datasets_file as datasets_file
from vod_d2.engine import load_config
from vod_d2.engine.predictor import dataset_metadata

cv2 = pytest.importorskip("cv2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_CONFIG = "configs/synthetic/single_frame.yaml"
SIZE = (72, 96)  # (H, W) of the test videos
# The smallest synthetic model, random weights, a 3-frame offline window.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TEST", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "MODEL.VIDEO.AGGREGATION", "WindowMeanAggregation",
    "MODEL.VIDEO.TEST_WINDOW", "(1, 1)",
]  # fmt: skip


def _load_demo():
    spec = importlib.util.spec_from_file_location("vod_d2_demo", REPO_ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _frames(num_frames, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (num_frames, SIZE[0] // 8, SIZE[1] // 8, 3), dtype=np.uint8)
    return [cv2.resize(f, SIZE[::-1], interpolation=cv2.INTER_LINEAR) for f in small]


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, SIZE[::-1])
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def _run_demo(*args, opts=()):
    torch.manual_seed(0)
    argv = ["--config-file", "configs/synthetic/single_frame.yaml", *args]
    return demo.main([*argv, "--opts", *TINY_OPTS, *opts])


def _check_detections(results, num_frames, threshold):
    assert isinstance(results, list) and results
    for r in results:
        assert 0 <= r["frame_idx"] < num_frames and r["image_id"] == r["frame_idx"], r
        assert r["category_id"] in range(5), r
        assert r["score"] >= threshold, r
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= SIZE[1] + 0.01 and 0 <= y <= y + h <= SIZE[0] + 0.01, r


def test_demo_writes_an_annotated_video_and_its_detections(tmp_path):
    video = _write_video(tmp_path / "in.mp4", _frames(8))
    out_dir = tmp_path / "out"  # created by the demo
    count = _run_demo(
        "--video-input", video, "--output", str(out_dir / "annotated.mp4"),
        "--json", str(out_dir / "detections.json"), "--confidence-threshold", "0.1",
    )  # fmt: skip
    assert count == 8
    assert sorted(os.listdir(out_dir)) == ["annotated.mp4", "detections.json"]  # no temp file
    annotated = read_video(out_dir / "annotated.mp4")
    assert len(annotated) == 8
    assert all(frame.shape == (*SIZE, 3) for frame in annotated)
    with open(out_dir / "detections.json") as f:
        results = json.load(f)
    _check_detections(results, 8, 0.1)
    assert {r["video_id"] for r in results} == {video}
    # Each frame is drawn on its own input frame, with boxes where it has detections.
    decoded = read_video(video)
    drawn = {r["frame_idx"] for r in results}
    for t in range(8):
        diff = np.abs(annotated[t].astype(int) - decoded[t])
        assert np.median(diff) < 20, t  # lossy codec twice, a few boxes and labels
        if t in drawn:
            assert diff.max() > 100, t


def test_demo_on_a_frame_folder_with_seq_nms_writes_images_and_sequences(tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    # Natural order: frame_10 comes last, although it sorts first as a string.
    names = [f"frame_{t}.png" for t in (0, 1, 2, 3, 4, 10)]
    frames = _frames(len(names), seed=1)
    for name, frame in zip(names, frames):
        cv2.imwrite(str(frames_dir / name), frame)
    out_dir, json_file = tmp_path / "annotated", tmp_path / "dets.json"
    count = _run_demo(
        "--input", str(frames_dir), "--output", str(out_dir), "--json", str(json_file),
        "--seq-nms", "--confidence-threshold", "0.1",
    )  # fmt: skip
    assert count == len(names)
    assert sorted(os.listdir(out_dir)) == sorted(names)
    for name, frame in zip(names, frames):
        annotated = cv2.imread(str(out_dir / name))
        assert annotated.shape == (*SIZE, 3), name
        # Lossless: the frame's own pixels survive wherever nothing is drawn.
        assert (annotated == frame).all(axis=2).mean() > 0.5, name
    with open(json_file) as f:
        results = json.load(f)
    _check_detections(results, len(names), 0.1)
    assert all(isinstance(r["sequence_id"], int) for r in results)
    # A sequence holds at most one box per frame.
    pairs = [(r["sequence_id"], r["frame_idx"]) for r in results]
    assert len(pairs) == len(set(pairs))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated", "dets.json", "frames"]


def test_demo_frames_to_video(tmp_path):
    paths = []
    for t, frame in enumerate(_frames(3, seed=2)):
        paths.append(str(tmp_path / f"{t:03d}.jpg"))
        cv2.imwrite(paths[-1], frame)
    output = tmp_path / "out.avi"
    _run_demo("--input", str(tmp_path / "*.jpg"), "--output", str(output), "--fps", "4")
    assert len(read_video(output)) == 3
    assert cv2.VideoCapture(str(output)).get(cv2.CAP_PROP_FPS) == 4


def test_bad_inputs_and_outputs_fail_clearly_and_leave_nothing(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = ["--output", str(out_dir / "a.mp4"), "--json", str(out_dir / "a.json")]
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        _run_demo("--video-input", str(tmp_path / "missing.mp4"), *output)
    with pytest.raises(FileNotFoundError, match="nothing_.*jpg"):
        _run_demo("--input", str(tmp_path / "nothing_*.jpg"), *output)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises((OSError, ValueError), match="empty.mp4"):
        _run_demo("--video-input", str(empty), *output)
    video = _write_video(tmp_path / "in.mp4", _frames(2))
    blocker = tmp_path / "a_file"
    blocker.touch()
    with pytest.raises(OSError, match="a_file"):
        _run_demo("--video-input", video, "--output", str(blocker / "out.mp4"))
    assert os.listdir(out_dir) == []

    # Fails half-way (the 4th frame has another size): no half-written video, images or JSON,
    # and the outputs of an earlier run stay as they were.
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for t, frame in enumerate(_frames(5, seed=3)):
        cv2.imwrite(str(frames_dir / f"{t}.png"), frame if t != 3 else frame[:40])
    for name in ("a.mp4", "a.json"):
        (out_dir / name).write_text("earlier run")
    for target in ("a.mp4", "folder"):
        with pytest.raises(ValueError, match="frame 3 of video"):
            _run_demo(
                "--input", str(frames_dir), "--output", str(out_dir / target),
                "--json", str(out_dir / "a.json"), "--confidence-threshold", "0",
            )  # fmt: skip
        assert sorted(os.listdir(out_dir)) == ["a.json", "a.mp4"], target
        for name in ("a.mp4", "a.json"):
            assert (out_dir / name).read_text() == "earlier run", (target, name)


def test_command_line_reports_a_missing_input_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    missing = tmp_path / "missing.mp4"
    run = subprocess.run(
        [sys.executable, "demo/demo.py", "--config-file", "configs/synthetic/single_frame.yaml"]
        + ["--video-input", str(missing), "--output", str(tmp_path / "out.mp4")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert f"demo.py: error: video file '{missing}' does not exist" in run.stderr
    with pytest.raises(SystemExit):
        demo.main(["--config-file", "x.yaml", "--video-input", str(missing)])  # no output


def _demo_command(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "demo/demo.py",
        "--config-file",
        "configs/synthetic/single_frame.yaml",
    ]
    return command + list(args), env


def test_output_folders_that_do_not_exist_yet_are_created(tmp_path):
    video = _write_video(tmp_path / "in.mp4", _frames(2))
    _run_demo("--video-input", video, "--output", str(tmp_path / "new" / "deeper") + os.sep)
    assert os.listdir(tmp_path / "new" / "deeper") == ["in.mp4"]
    _run_demo("--video-input", video, "--output", str(tmp_path / "plain"))  # no extension
    assert os.listdir(tmp_path / "plain") == ["in.mp4"]
    with pytest.raises(ValueError, match=r"'.*out.webp': .webp is not a video extension"):
        _run_demo("--video-input", video, "--output", str(tmp_path / "out.webp"))


def test_opts_before_other_flags_is_explained(tmp_path, capsys):
    video = _write_video(tmp_path / "in.mp4", _frames(2))
    argv = ["--config-file", "configs/synthetic/single_frame.yaml", "--video-input", video]
    with pytest.raises(SystemExit):
        demo.main([*argv, "--opts", "MODEL.DEVICE", "cpu", "--output", str(tmp_path / "a.mp4")])
    assert (
        "--opts must come last: it takes everything after it as config KEY VALUE pairs, so "
        "--output became config options" in capsys.readouterr().err
    )


def test_a_missing_weights_file_is_one_line(tmp_path):
    video = _write_video(tmp_path / "in.mp4", _frames(2))
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS nowhere.pth does not exist"):
        _run_demo("--video-input", video, "--json", str(tmp_path / "a.json"),
                  opts=["MODEL.WEIGHTS", "nowhere.pth"])  # fmt: skip
    assert not (tmp_path / "a.json").exists()


def test_weights_for_another_class_count_are_one_line(tmp_path):
    video = _write_video(tmp_path / "in.mp4", _frames(2))
    cfg = load_config(SYNTHETIC_CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    cfg.MODEL.DEVICE = "cpu"
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "three.pth")
    with pytest.raises(ValueError) as raised:
        _run_demo("--video-input", video, "--json", str(tmp_path / "a.json"),
                  opts=["MODEL.WEIGHTS", str(tmp_path / "three.pth")])  # fmt: skip
    assert str(raised.value) == (
        f"MODEL.WEIGHTS {tmp_path / 'three.pth'} was trained for 3 classes but "
        "MODEL.ROI_HEADS.NUM_CLASSES is 5, so its class and box predictors "
        "(roi_heads.box_predictor.cls_score, roi_heads.box_predictor.bbox_pred) do not fit: "
        "set MODEL.ROI_HEADS.NUM_CLASSES 3"
    )
    assert not (tmp_path / "a.json").exists()


def test_json_and_labels_use_the_test_datasets_ids_and_names(tmp_path, caplog):
    # A 2-class CocoVID test set (dog id 3, car id 7) declared in a datasets file.
    datasets = tmp_path / "datasets.yaml"
    json_file = REPO_ROOT / "tests" / "data" / "fixtures" / "cocovid" / "videos.json"
    datasets.write_text(f"_demo_val:\n  kind: cocovid\n  json_file: {json_file}\n  image_root: i\n")
    video = _write_video(tmp_path / "in.mp4", _frames(4))
    opts = ["DATASETS.FILE", str(datasets), "DATASETS.TEST", '("_demo_val",)']
    opts += ["MODEL.ROI_HEADS.NUM_CLASSES", "2"]
    try:
        _run_demo("--video-input", video, "--json", str(tmp_path / "a.json"),
                  "--confidence-threshold", "0", opts=opts)  # fmt: skip
        with open(tmp_path / "a.json") as f:
            results = json.load(f)
        assert results and {r["category_id"] for r in results} == {3, 7}
        args = demo.get_parser().parse_args(
            ["--config-file", SYNTHETIC_CONFIG, "--video-input", video, "--opts", *opts]
        )
        assert dataset_metadata(demo.setup_cfg(args)).thing_classes == ["dog", "car"]
    finally:
        DatasetCatalog.remove("_demo_val")
        MetadataCatalog.remove("_demo_val")
        datasets_file._REGISTERED.pop("_demo_val", None)
    with caplog.at_level(logging.WARNING, logger="vod_d2"):
        _run_demo("--video-input", video, "--json", str(tmp_path / "b.json"),
                  opts=["DATASETS.TEST", '("nope",)'])  # fmt: skip
    assert (
        "DATASETS.TEST names 'nope', which is not registered: labels are drawn as class "
        "indices" in caplog.text
    )


def test_sigterm_leaves_no_temporary_file(tmp_path):
    video = _write_video(tmp_path / "in.mp4", _frames(30))
    out = tmp_path / "out"
    command, env = _demo_command(
        "--video-input", video, "--output", str(out / "a.mp4"), "--json", str(out / "a.json"),
        # The tests' own modules are not registered in the demo's process: a built-in one.
        "--opts", *TINY_OPTS[:-3], "SingleFrameAggregation", *TINY_OPTS[-2:],
    )  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and len(os.listdir(out)) == 2) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    hidden = sorted(os.listdir(out))
    assert all(name.startswith(".") for name in hidden) and len(hidden) == 2, hidden
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 128 + signal.SIGTERM
    assert os.listdir(out) == []


def test_a_corrupt_input_frame_names_its_file(tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for t, frame in enumerate(_frames(3, seed=4)):
        cv2.imwrite(str(frames_dir / f"{t}.png"), frame)
    broken = frames_dir / "1.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    with pytest.raises(OSError, match=f"Cannot read the frame {broken}"):
        _run_demo("--input", str(frames_dir), "--json", str(tmp_path / "a.json"))


def test_online_runs_the_causal_variant(tmp_path):
    # The tiny model's window (1, 1) becomes (2, 0): every frame is detected from the past.
    video = _write_video(tmp_path / "in.mp4", _frames(6))
    argv = ["--config-file", SYNTHETIC_CONFIG, "--video-input", video, "--json", "x.json"]
    cfg = demo.setup_cfg(demo.get_parser().parse_args([*argv, "--online", "--opts", *TINY_OPTS]))
    assert tuple(cfg.MODEL.VIDEO.TEST_WINDOW) == (2, 0)
    assert _run_demo("--video-input", video, "--json", str(tmp_path / "o.json"), "--online") == 6
    with open(tmp_path / "o.json") as f:
        _check_detections(json.load(f), 6, 0.5)
    with pytest.raises(ValueError, match="--seq-nms needs whole videos and --online none"):
        _run_demo(
            "--video-input", video, "--json", str(tmp_path / "x.json"), "--online", "--seq-nms"
        )
    assert not os.path.exists(tmp_path / "x.json")
