import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _testing import read_video
from detectron2.data import DatasetCatalog
from PIL import Image

import vod_d2.data.synthetic as synthetic
from vod_d2.data.datasets import build_frame_table, load_imagenet_det, load_imagenet_vid
from vod_d2.data.synthetic import (
    DEGRADATIONS,
    SYNTHETIC_CLASSES,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    render_video,
    write_synthetic_video,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# A tree small enough to generate in about a second, with videos as long as the shortest of
# the default dataset.
SMALL = dict(
    num_train_videos=2, num_val_videos=2, num_det_images=3, num_frames=(40, 44), size=(64, 80)
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return generate_synthetic_dataset(str(tmp_path_factory.mktemp("synthetic") / "root"), **SMALL)


def _files(root):
    """relative path -> bytes of every file under ``root``."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: high for sharp edges, low when blurred."""
    grey = image.astype(np.float64).mean(-1)
    laplacian = (
        grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    )
    return float(laplacian.var())


def _load(root, kind="val", cache_dir=None):
    options = dict(
        class_names=SYNTHETIC_CLASSES, cache_dir=cache_dir, use_cache=cache_dir is not None
    )
    if kind == "det":
        return load_imagenet_det(root, "ImageSets/DET_train_30classes.txt", **options)
    image_set = {"val": "VID_val_videos.txt", "train": "VID_train_15frames.txt"}[kind]
    return load_imagenet_vid(root, f"ImageSets/{image_set}", **options)


def test_same_seed_same_bytes_other_seed_other_data(tree, tmp_path):
    again = _files(generate_synthetic_dataset(str(tmp_path / "again"), **SMALL))
    assert again == _files(tree)
    other = _files(generate_synthetic_dataset(str(tmp_path / "other"), seed=1, **SMALL))
    images = [k for k in again if k.endswith(".JPEG")]
    assert sum(other.get(k) != again[k] for k in images) == len(images)
    assert _load(str(tmp_path / "other")) != _load(tree)


def test_the_imagenet_loader_reads_the_tree(tree):
    val, train, det = _load(tree), _load(tree, "train"), _load(tree, "det")
    assert len({r["video_id"] for r in val}) == 2 and len(det) == 3
    assert all(r["video_length"] == 1 and r["video_id"].startswith("DET/") for r in det)
    # Val lists every frame; train lists FGFA's 15 evenly spaced frames of each snippet.
    assert all(
        len([r for r in val if r["video_id"] == v["video_id"]]) == v["video_length"] for v in val
    )
    for video in {r["video_id"] for r in train}:
        listed = [r["frame_idx"] for r in train if r["video_id"] == video]
        length = next(r["video_length"] for r in train if r["video_id"] == video)
        assert 40 <= length <= 44
        assert listed == sorted({length * (2 * k + 1) // 30 for k in range(15)})
    table = build_frame_table(val + train + det)
    for video, files in table.items():
        for name in files:
            assert os.path.isfile(name), (video, name)
    for r in val + train + det:
        with Image.open(r["file_name"]) as image:
            assert image.size == (r["width"], r["height"]) == (80, 64)
        for ann in r["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]
            assert 0 <= x0 <= x1 < 80 and 0 <= y0 <= y1 < 64
            assert 0 <= ann["category_id"] < len(SYNTHETIC_CLASSES)


def test_objects_move_and_change_scale(tree):
    val = _load(tree)
    for video in {r["video_id"] for r in val}:
        boxes = {}
        for r in val:
            for ann in r["annotations"] if r["video_id"] == video else ():
                boxes.setdefault(ann["track_id"], []).append(ann["bbox"])
        for track, track_boxes in boxes.items():
            b = np.asarray(track_boxes)
            centers, areas = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            assert np.ptp(centers, axis=0).max() > 1 or np.ptp(areas) > 0, (video, track)


def _runs(frames, kind):
    """Lengths of the runs of consecutive frames labelled ``kind``."""
    return [
        len(list(g)) for labelled, g in itertools.groupby(kind in f for f in frames) if labelled
    ]


def test_every_degradation_is_in_the_data_as_stretches_of_frames(tree):
    with open(os.path.join(tree, "synthetic.json")) as f:
        manifest = json.load(f)
    assert manifest["seed"] == 0 and manifest["classes"] == list(SYNTHETIC_CLASSES)
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION
    labels = manifest["degradations"]
    assert set(labels) == {r["video_id"] for r in _load(tree) + _load(tree, "train")}
    for video, frames in labels.items():
        # Blur and defocus in every video, as runs of 4-12 consecutive frames, not lone frames.
        for kind in ("motion_blur", "defocus"):
            runs = _runs(frames, kind)
            assert runs and all(4 <= n <= 12 for n in runs), (video, kind, runs)
        assert sum(map(bool, frames)) < len(frames)
        # The pole hides objects for several consecutive frames in every video.
        assert max(_runs(frames, "occlusion"), default=0) >= 3, video
    assert max(max(_runs(f, "occlusion"), default=0) for f in labels.values()) >= 8
    assert any(a["occluded"] for r in _load(tree) for a in r["annotations"])


def test_default_videos_fit_long_windows_and_key_frame_intervals(tmp_path):
    # The default dataset's videos, rendered at 32x40 px to be fast; lengths do not depend on size.
    options = {**synthetic._DEFAULT_OPTIONS, "num_det_images": 0, "size": (32, 40)}
    root = generate_synthetic_dataset(str(tmp_path / "default"), **options)
    with open(os.path.join(root, "synthetic.json")) as f:
        lengths = {v: len(frames) for v, frames in json.load(f)["degradations"].items()}
    val = [n for v, n in lengths.items() if "/val/" in v]
    for video, n in lengths.items():
        # A 27-frame window (K = 13) and at least 4 key frames at interval 10 in every video.
        assert 40 <= n <= 120, (video, n)
    assert min(lengths.values()) < 60 and max(lengths.values()) > 100  # short and long ones
    # Evaluation at ~0.02 s/frame stays under 30 s.
    assert len(val) == 8 and sum(val) * 0.02 < 30


def test_ensure_replaces_a_tree_of_another_generator_version(tmp_path, caplog):
    root = str(tmp_path / "root")
    ensure_synthetic_dataset(root, **SMALL)
    manifest_file = os.path.join(root, "synthetic.json")
    with open(manifest_file) as f:
        manifest = json.load(f)
    manifest["generator_version"] = synthetic.GENERATOR_VERSION - 1
    with open(manifest_file, "w") as f:
        json.dump(manifest, f)
    stale = os.path.join(root, "stale.txt")
    open(stale, "w").close()
    assert ensure_synthetic_dataset(root, **SMALL) == root
    assert f"generator version {synthetic.GENERATOR_VERSION - 1}" in caplog.text
    assert not os.path.exists(stale) and sorted(os.listdir(tmp_path)) == ["root"]
    assert _files(root) == _files(generate_synthetic_dataset(str(tmp_path / "fresh"), **SMALL))


@pytest.mark.parametrize("seed", range(3))
def test_degradations_change_exactly_their_frames(seed):
    def render(degrade):
        return render_video(np.random.default_rng(seed), 20, (96, 128), degrade=degrade)

    clean = render(())
    assert not any(clean.degradations)
    for degrade in (("motion_blur",), ("defocus",), ("occlusion",)):
        video = render(degrade)
        assert any(video.degradations) or degrade == ("occlusion",)
        for t, (frame, labels) in enumerate(zip(video.frames, video.degradations)):
            assert set(labels) <= set(degrade)
            if not labels:
                if degrade != ("occlusion",):  # a pole that hides no object is unlabelled
                    assert np.array_equal(frame, clean.frames[t]), (degrade, t)
            elif labels == ["occlusion"]:
                assert not np.array_equal(frame, clean.frames[t])
                visible = {o["track_id"] for o in video.objects[t]}
                assert visible <= {o["track_id"] for o in clean.objects[t]}
            else:  # blurred: the same scene with weaker edges
                assert _sharpness(frame) < 0.8 * _sharpness(clean.frames[t]), (degrade, t)
    with pytest.raises(ValueError, match="unknown degradations"):
        render(("rain",))
    assert set(DEGRADATIONS) == {"motion_blur", "defocus", "occlusion"}


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_after_some_frames(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = synthetic._write_frame
    monkeypatch.setattr(synthetic, "_write_frame", fail_after_some_frames)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(str(tmp_path / "root"), **SMALL)
    assert os.listdir(tmp_path) == []


def test_ensure_generates_once(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    assert ensure_synthetic_dataset(root, **SMALL) == root
    before = _files(root)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(synthetic, "generate_synthetic_dataset", no_generation)
    assert ensure_synthetic_dataset(root) == root and _files(root) == before
    with pytest.raises(FileExistsError, match="needs a new folder"):
        generate_synthetic_dataset(root)
    os.remove(os.path.join(root, "synthetic.json"))
    with pytest.raises(FileNotFoundError, match=f"{root} exists but is not a synthetic dataset"):
        ensure_synthetic_dataset(root)


def test_builtin_names_generate_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setattr(synthetic, "_DEFAULT_OPTIONS", SMALL)
    val = DatasetCatalog.get("synthetic_vid_val")
    root = str(tmp_path / "vod_d2_synthetic")
    assert val == _load(root) and val[0]["file_name"].startswith(root)
    assert len(DatasetCatalog.get("synthetic_vid_train")) == len(_load(root, "train"))
    det = DatasetCatalog.get("synthetic_det_train")
    assert len(det) == 3 and all(r["video_length"] == 1 for r in det)
    assert os.listdir(os.path.join(root, ".cache"))  # the cache lives in the generated tree


def test_command_line_runs_without_a_warning_and_documents_its_options():
    run = subprocess.run(
        [sys.executable, "-W", "default", "-m", "vod_d2.data.synthetic", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "RuntimeWarning" not in run.stderr  # runpy: the module was imported before running
    assert "--num-train-videos" in run.stdout
    assert all(action.help for action in synthetic.get_parser()._actions)


def test_command_line(tmp_path):
    synthetic.main(
        ["--output", str(tmp_path / "cli"), "--seed", "3", "--num-train-videos", "1",
         "--num-val-videos", "1", "--num-det-images", "1", "--min-frames", "4", "--max-frames", "4",
         "--height", "48", "--width", "64"]
    )  # fmt: skip
    val = _load(str(tmp_path / "cli"))
    assert len(val) == 4 and (val[0]["height"], val[0]["width"]) == (48, 64)


def test_write_synthetic_video(tmp_path):
    pytest.importorskip("cv2")
    path = write_synthetic_video(str(tmp_path / "demo.mp4"), num_frames=12, size=(96, 128), seed=1)
    frames = read_video(path)
    assert len(frames) == 12
    assert all(f.shape == (96, 128, 3) for f in frames)
    assert not np.array_equal(frames[0], frames[-1])  # things move


def test_the_loaders_read_each_frames_conditions_and_each_objects_visible_share(tree):
    with open(os.path.join(tree, "synthetic.json")) as f:
        manifest = json.load(f)["degradations"]
    records = _load(tree) + _load(tree, "train")
    for r in records:
        labels = manifest[r["video_id"]][r["frame_idx"]]
        # Blur and defocus are a frame's conditions; the pole is an object's (its visible share).
        assert set(r.get("conditions", ())) == set(labels) - {"occlusion"}, r["file_name"]
        for ann in r["annotations"]:
            assert 0 < ann["visible"] <= 1 and ann["occluded"] == (ann["visible"] < 0.5)
    visible = [a["visible"] for r in records for a in r["annotations"]]
    assert min(visible) < 0.5 < max(visible)
    assert all(0 < a["visible"] <= 1 for r in _load(tree, "det") for a in r["annotations"])


@pytest.mark.parametrize("seed", range(3))
def test_visible_share_is_what_poles_and_other_objects_leave_of_the_object(seed):
    # The same scene without poles: objects hide only one another there, and the poles hide
    # more, exactly in the frames labelled "occlusion".
    occluded = render_video(np.random.default_rng(seed), 30, (64, 80), profile="hard")
    clean = render_video(np.random.default_rng(seed), 30, (64, 80), degrade=(), profile="hard")
    for t, (objects, free) in enumerate(zip(occluded.objects, clean.objects)):
        free = {o["track_id"]: o for o in free}
        for obj in objects:
            assert obj["box"] == free[obj["track_id"]]["box"]
            assert obj["visible"] <= free[obj["track_id"]]["visible"]
        hidden = len(objects) < len(free) or any(
            o["visible"] < free[o["track_id"]]["visible"] for o in objects
        )
        assert hidden == ("occlusion" in occluded.degradations[t]), t


def test_the_hard_profile_degrades_more_of_the_ground_truth():
    def degraded_share(profile):
        degraded = total = 0
        for i in range(6):
            video = render_video(np.random.default_rng(i), 50, (64, 80), profile=profile)
            for objects, labels in zip(video.objects, video.degradations):
                blurred = bool(set(labels) & {"motion_blur", "defocus"})
                total += len(objects)
                degraded += sum(blurred or o["occluded"] for o in objects)
        return degraded / total

    assert degraded_share("hard") > degraded_share("default") + 0.1
    with pytest.raises(ValueError, match="unknown degradation profile 'foggy'"):
        render_video(np.random.default_rng(0), 5, (64, 80), profile="foggy")


@pytest.mark.parametrize("index", range(4))
def test_flow_pairs_carry_the_exact_flow(index):
    import torch
    import torch.nn.functional as F

    cur, ref, flow = synthetic.render_flow_pair(synthetic.flow_pair_rng(0, index), (64, 80))
    assert cur.shape == ref.shape == (64, 80, 3) and flow.shape == (2, 64, 80)
    assert np.abs(flow).max() > 0.5  # something moves
    # Warping the reference frame by the flow reproduces the current frame (up to noise,
    # disocclusions and resampling), far better than the unwarped reference does.
    ys, xs = np.mgrid[0:64, 0:80] + 0.5
    grid = np.stack([(xs + flow[0]) / 80 * 2 - 1, (ys + flow[1]) / 64 * 2 - 1], -1)
    inside = (np.abs(grid) < 1).all(-1)
    warped = (
        F.grid_sample(
            torch.tensor(ref.transpose(2, 0, 1)[None], dtype=torch.float32),
            torch.tensor(grid[None], dtype=torch.float32),
            align_corners=False,
        )[0]
        .numpy()
        .transpose(1, 2, 0)
    )
    # Medians: disoccluded pixels have no match whatever the flow. The frames' noise alone
    # (sigma 3 each) gives a median difference of about 3.3.
    warp_error = np.abs(warped - cur).mean(-1)
    still_error = np.abs(ref.astype(float) - cur).mean(-1)
    assert np.median(warp_error[inside]) < 5
    moving = inside & (np.hypot(*flow) >= 1)
    if moving.mean() > 0.2:
        assert np.median(warp_error[moving]) < 0.6 * np.median(still_error[moving])


def test_write_flow_pairs_in_the_flyingchairs_layout(tmp_path):
    root = synthetic.write_flow_pairs(str(tmp_path / "pairs"), 2, size=(32, 40), seed=5)
    assert sorted(os.listdir(root)) == [
        f"0000{i}_{kind}" for i in (1, 2) for kind in ("flow.flo", "img1.png", "img2.png")
    ]
    cur, ref, flow = synthetic.render_flow_pair(synthetic.flow_pair_rng(5, 1), (32, 40))
    with open(os.path.join(root, "00002_flow.flo"), "rb") as f:
        assert np.fromfile(f, np.float32, 1)[0] == np.float32(202021.25)
        assert np.fromfile(f, np.int32, 2).tolist() == [40, 32]
        stored = np.fromfile(f, np.float32).reshape(32, 40, 2)
    np.testing.assert_array_equal(stored.transpose(2, 0, 1), flow)
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(root, "00002_img2.png"))), ref)
