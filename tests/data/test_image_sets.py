"""The official ILSVRC2015 image-set lists, and the FGFA lists derived from them."""

import logging
import os

import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

import vod_d2.data.datasets.image_sets as image_sets
from vod_d2.data.datasets import (
    VID_CLASSES,
    VID_WNIDS,
    fgfa_train_frames,
    load_imagenet_det,
    load_imagenet_vid,
)
from vod_d2.data.datasets.image_sets import DET_CLASS_INDEX, derived_image_set

TRAIN = "ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
VAL = "ILSVRC2015_val_00000000"


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def official(root):
    """The fixture tree with the official VID lists and no FGFA list."""
    for name in os.listdir(os.path.join(root, "ImageSets")):
        os.remove(os.path.join(root, "ImageSets", name))
    vid = os.path.join(root, "ImageSets", "VID")
    _write(os.path.join(vid, "val.txt"), "".join(f"{VAL}/{t:06d} {t + 1}\n" for t in range(3)))
    _write(os.path.join(vid, "train_7.txt"), f"{TRAIN} 1\n")  # car
    _write(os.path.join(vid, "train_9.txt"), f"{TRAIN} -1\n")  # no ... of another class
    return root


def _det_tree(root):
    """One DET image per VID class in ILSVRC2013_train/<wnid>/, one more of two classes."""
    lists = {name: [] for name in VID_CLASSES}
    for name, wnid in zip(VID_CLASSES, VID_WNIDS):
        stem = f"ILSVRC2013_train/{wnid}/{wnid}_1"
        os.makedirs(os.path.join(root, "Data", "DET", "train", os.path.dirname(stem)))
        objects = [wnid] + (["n02391049"] if name == "dog" else [])  # the dog with a zebra
        xml = "".join(
            f"<object><name>{w}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
            "<ymax>9</ymax></bndbox></object>"
            for w in objects
        )
        _write(
            os.path.join(root, "Annotations", "DET", "train", stem + ".xml"),
            f"<annotation><size><width>16</width><height>12</height></size>{xml}</annotation>",
        )
        Image.new("RGB", (16, 12)).save(os.path.join(root, "Data", "DET", "train", stem + ".JPEG"))
        lists[name].append(f"{stem} 1")
        if name == "dog":
            lists["zebra"].append(f"{stem} 1")
    for name, lines in lists.items():
        negative = "ILSVRC2014_train_0000/ILSVRC2014_train_00000001 -1"
        text = "\n".join([negative] + lines) + "\n"
        _write(os.path.join(root, "ImageSets", "DET", f"train_{DET_CLASS_INDEX[name]}.txt"), text)


def test_fgfa_train_frames_are_the_centres_of_15_parts():
    # floor((2k + 1) * L / 30): 10, 30, ..., 290 for L = 300; for L = 54, (2k + 1) * 1.8.
    assert fgfa_train_frames(300) == list(range(10, 300, 20))
    assert fgfa_train_frames(54) == [1, 5, 9, 12, 16, 19, 23, 27, 30, 34, 37, 41, 45, 48, 52]
    for length in range(1, 16):  # short snippets: every frame, each once
        assert fgfa_train_frames(length) == list(range(length)), length
    for length in range(15, 400):
        frames = fgfa_train_frames(length)
        assert len(frames) == 15 and frames == sorted(set(frames)) and frames[-1] < length


def test_official_vid_lists_are_read_directly(official, cache_dir):
    val = load_imagenet_vid(official, "ImageSets/VID/val.txt", cache_dir=cache_dir)
    assert val == load_imagenet_vid(official, split="val", cache_dir=cache_dir)
    assert [r["video_id"] for r in val] == [f"VID/val/{VAL}"] * 3
    # train_<k>.txt: every frame of the snippets marked 1; a list marking none is an error.
    train = load_imagenet_vid(official, "ImageSets/VID/train_7.txt", cache_dir=cache_dir)
    assert train == load_imagenet_vid(official, split="train", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="train_9.txt marks no line with 1"):
        load_imagenet_vid(official, "ImageSets/VID/train_9.txt", cache_dir=cache_dir)
    _write(os.path.join(official, "ImageSets", "VID", "train_9.txt"), f"{TRAIN} yes\n")
    with pytest.raises(ValueError, match=r"train_9.txt:1: expected '<path> 1\|-1'"):
        load_imagenet_vid(official, "ImageSets/VID/train_9.txt", cache_dir=cache_dir)


def test_fgfa_video_list_with_one_line_per_video_means_every_frame(root, cache_dir, caplog):
    _write(os.path.join(root, "ImageSets", "per_video.txt"), f"val/{VAL} 1 0 3\n")
    with caplog.at_level(logging.INFO, logger="vod_d2"):
        videos = load_imagenet_vid(root, "ImageSets/per_video.txt", cache_dir=cache_dir)
    assert [r["frame_idx"] for r in videos] == [0, 1, 2]
    assert "once, at frame 0 (FGFA's video list)" in caplog.text
    # One frame of a video listed with others' several frames is just that frame.
    _write(
        os.path.join(root, "ImageSets", "mixed.txt"),
        f"val/{VAL} 1 0 3\ntrain/{TRAIN} 2 1 4\ntrain/{TRAIN} 3 2 4\n",
    )
    mixed = load_imagenet_vid(root, "ImageSets/mixed.txt", cache_dir=cache_dir)
    assert [(r["video_id"][-8:], r["frame_idx"]) for r in mixed] == [
        ("00000000", 1), ("00000000", 2), ("00000000", 0),
    ]  # fmt: skip


def test_official_det_lists_and_repeated_det_lines(root, cache_dir):
    _det_tree(root)
    zebra = f"ImageSets/DET/train_{DET_CLASS_INDEX['zebra']}.txt"
    records = load_imagenet_det(root, zebra, cache_dir=cache_dir)
    # The -1 line is left out; paths are under train/.
    assert [r["video_id"] for r in records] == [
        f"DET/train/ILSVRC2013_train/{w}/{w}_1" for w in ("n02084071", "n02391049")
    ]
    # FGFA's DET list repeats images of two classes: each is read once.
    det = "train/ILSVRC2014_train_0000/ILSVRC2014_train_0000000"
    _write(os.path.join(root, "ImageSets", "twice.txt"), f"{det}1 1\n{det}2 1\n{det}1 1\n")
    assert len(load_imagenet_det(root, "ImageSets/twice.txt", cache_dir=cache_dir)) == 2


def test_derived_lists_follow_the_fgfa_rules(official, tmp_path, monkeypatch):
    cache = str(tmp_path / "derived")
    path = derived_image_set(official, "VID_train_15frames.txt", cache)
    assert path.startswith(cache) and not path.startswith(official)
    with open(path) as f:  # the 4-frame snippet: all its frames (fgfa_train_frames(4))
        assert f.read() == "".join(f"train/{TRAIN} 1 {t} 4\n" for t in range(4))
    with open(derived_image_set(official, "VID_val_frames.txt", cache)) as f:
        assert f.read() == "".join(f"val/{VAL}/{t:06d} {t + 1}\n" for t in range(3))

    _det_tree(official)
    with open(derived_image_set(official, "DET_train_30classes.txt", cache)) as f:
        lines = f.read().splitlines()
    # Each class's images in VID class order; the dog image (also a zebra) is listed once.
    everyone = [f"train/ILSVRC2013_train/{w}/{w}_1 1" for w in VID_WNIDS]
    assert lines == everyone
    # At most DET_IMAGES_PER_CLASS of each class's list: the zebra's list starts with the dog.
    monkeypatch.setattr(image_sets, "DET_IMAGES_PER_CLASS", 1)
    os.remove(os.path.join(os.path.dirname(path), "DET_train_30classes.txt"))
    with open(derived_image_set(official, "DET_train_30classes.txt", cache)) as f:
        assert f.read().splitlines() == everyone[:-1]


def test_det_lists_numbered_otherwise_are_an_error(official, tmp_path):
    _det_tree(official)
    airplane = os.path.join(
        official, "ImageSets", "DET", f"train_{DET_CLASS_INDEX['airplane']}.txt"
    )
    bird = os.path.join(official, "ImageSets", "DET", f"train_{DET_CLASS_INDEX['bird']}.txt")
    os.replace(bird, airplane)
    with pytest.raises(ValueError, match=f"{airplane} should list the DET images of airplane"):
        derived_image_set(official, "DET_train_30classes.txt", str(tmp_path / "derived"))


def test_builtin_names_derive_missing_lists_once(official, tmp_path, monkeypatch, caplog):
    _det_tree(official)
    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.dirname(official))
    monkeypatch.setenv("VOD_D2_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = image_sets.derive_vid_train_15frames
    monkeypatch.setitem(
        image_sets._DERIVATIONS,
        "VID_train_15frames.txt",
        (lambda *a: calls.append(1) or real(*a), "ImageSets/VID/train_*.txt"),
    )
    with caplog.at_level(logging.INFO, logger="vod_d2"):
        train = DatasetCatalog.get("imagenet_vid_train_15frames")
    assert calls == [1] and "does not exist: derived it from" in caplog.text
    assert [r["frame_idx"] for r in train] == [0, 1, 2, 3]
    assert DatasetCatalog.get("imagenet_vid_train_15frames") == train and calls == [1]
    assert len(DatasetCatalog.get("imagenet_vid_val")) == 3
    assert len(DatasetCatalog.get("imagenet_det_train_30classes")) == 30
    # A newer official list is derived again.
    listed = os.path.join(official, "ImageSets", "VID", "train_7.txt")
    os.utime(listed, (os.stat(listed).st_atime + 10, os.stat(listed).st_mtime + 10))
    DatasetCatalog.get("imagenet_vid_train_15frames")
    assert calls == [1, 1]
