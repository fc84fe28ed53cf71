import json
import os
import pickle
import shutil

import numpy as np
import pytest
from _frames import write_frames
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

import vod_d2.data.datasets.frame_files as frame_files
import vod_d2.data.datasets.imagenet_vid as imagenet_vid
import vod_d2.data.datasets.register as register
import vod_d2.data.datasets.vid_xml as vid_xml
from vod_d2.data.datasets import (
    BUILTIN_DATASETS,
    SYNTHETIC_CLASSES,
    VID_CLASSES,
    NumberedFrames,
    build_frame_table,
    dataset_classes,
    load_cocovid_json,
    load_imagenet_det,
    load_imagenet_vid,
    register_video_dataset,
)
from vod_d2.data.datasets.vid_xml import parse_annotation_files

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TRAIN = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
VAL = "val/ILSVRC2015_val_00000000"
DET1 = "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001"
DET2 = "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000002"


def _annotation(root, kind, stem):
    return os.path.join(root, "Annotations", kind, f"{stem}.xml")


def _check_record_contract(records):
    """Keys, types, unique image ids and (video_id, frame_idx) order of any loader's records."""
    assert [(r["video_id"], r["frame_idx"]) for r in records] == sorted(
        (r["video_id"], r["frame_idx"]) for r in records
    )
    assert len({r["image_id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {
            "file_name", "height", "width", "image_id", "video_id", "frame_idx", "video_length",
            "annotations",
        }  # fmt: skip
        assert isinstance(r["image_id"], int) and 0 <= r["frame_idx"] < r["video_length"]
        for ann in r["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYXY_ABS
            x0, y0, x1, y1 = ann["bbox"]
            assert x0 <= x1 and y0 <= y1
            assert isinstance(ann["track_id"], int) and isinstance(ann["occluded"], bool)


def test_vid_xml_values_are_kept_as_written(root, cache_dir):
    records = load_imagenet_vid(root, "ImageSets/VID_val_videos.txt", cache_dir=cache_dir)
    _check_record_contract(records)
    assert [r["frame_idx"] for r in records] == [0, 1, 2]
    for t, r in enumerate(records):
        assert r["file_name"] == os.path.join(root, "Data", "VID", VAL, f"{t:06d}.JPEG")
        assert (r["height"], r["width"], r["video_id"], r["video_length"]) == (
            96,
            128,
            "VID/" + VAL,
            3,
        )
        # Inclusive devkit pixels (0..127 on a 128 px wide image) are not shifted.
        (ann,) = r["annotations"]
        assert ann["bbox"] == [0.0, 0.0, 127.0, 95.0]
        assert ann["category_id"] == VID_CLASSES.index("airplane") and ann["track_id"] == 3


def test_vid_15frames_list_keeps_real_indices_and_the_whole_video(root, cache_dir):
    records = load_imagenet_vid(root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir)
    _check_record_contract(records)
    assert [(r["frame_idx"], r["video_length"]) for r in records] == [(1, 4), (3, 4)]
    car, dog = VID_CLASSES.index("car"), VID_CLASSES.index("dog")
    (first,) = records[0]["annotations"]
    assert (first["bbox"], first["category_id"], first["track_id"]) == (
        [20.0, 20.0, 70.0, 50.0],
        car,
        0,
    )
    by_track = {a["track_id"]: a for a in records[1]["annotations"]}
    assert by_track[1]["category_id"] == dog
    assert by_track[1]["occluded"] and not by_track[1]["generated"]
    assert not by_track[0]["occluded"]
    # Frames 0 and 2 are not listed, yet the table names all 4 so they can be support frames.
    table = build_frame_table(records)
    frames = table["VID/" + TRAIN]
    assert isinstance(frames, NumberedFrames) and len(frames) == 4
    for t in range(4):
        assert frames[t] == os.path.join(root, "Data", "VID", TRAIN, f"{t:06d}.JPEG")
    assert frames[1] == records[0]["file_name"] and frames[3] == records[1]["file_name"]
    assert pickle.loads(pickle.dumps(frames)) == frames
    with pytest.raises(IndexError):
        frames[4]


def test_vid_frame_list_and_split_scan_match_the_video_list(root, cache_dir):
    videos = load_imagenet_vid(root, "ImageSets/VID_val_videos.txt", cache_dir=cache_dir)
    frames = load_imagenet_vid(root, "ImageSets/VID_val_frames.txt", cache_dir=cache_dir)
    scanned = load_imagenet_vid(root, split="val", cache_dir=cache_dir)
    assert frames == videos and scanned == videos
    train = load_imagenet_vid(root, split="train", cache_dir=cache_dir)
    assert [r["frame_idx"] for r in train] == [0, 1, 2, 3]
    assert train[0]["annotations"] == []  # a frame without objects stays a frame
    assert train[2]["annotations"][1]["generated"]


def test_det_images_are_one_frame_videos(root, cache_dir):
    records = load_imagenet_det(root, "ImageSets/DET_train_30classes.txt", cache_dir=cache_dir)
    _check_record_contract(records)
    assert [r["video_id"] for r in records] == ["DET/" + DET1, "DET/" + DET2]
    for r in records:
        assert (r["frame_idx"], r["video_length"]) == (0, 1)
        assert all(a["track_id"] == -1 for a in r["annotations"])
    # The person (a DET class outside the 30 VID classes) is left out, the zebra is kept.
    (zebra,) = records[0]["annotations"]
    assert zebra["category_id"] == VID_CLASSES.index("zebra")
    assert zebra["bbox"] == [50.0, 60.0, 150.0, 140.0]
    assert records[0]["file_name"] == os.path.join(root, "Data", "DET", DET1 + ".JPEG")
    table = build_frame_table(records)
    for r in records:
        assert table[r["video_id"]] == (r["file_name"],)


def test_class_names_accept_names_and_restrict_the_classes(root, cache_dir):
    records = load_imagenet_vid(
        root, "ImageSets/VID_train_15frames.txt", class_names=("dog", "car"), cache_dir=cache_dir
    )
    assert [a["category_id"] for r in records for a in r["annotations"]] == [1, 1, 0]
    path = _annotation(root, "VID", f"{TRAIN}/000001")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("n02958343", "car"))  # a class name instead of its wnid
    again = load_imagenet_vid(
        root, "ImageSets/VID_train_15frames.txt", class_names=("dog", "car"), cache_dir=cache_dir
    )
    assert again == records


@pytest.mark.parametrize("num_workers", [1, 2])
def test_malformed_and_unknown_class_files_are_named(root, cache_dir, num_workers, monkeypatch):
    monkeypatch.setattr(vid_xml, "_MIN_FILES_PER_WORKER", 1)  # errors cross the process pool
    target = _annotation(root, "VID", f"{TRAIN}/000003")
    shutil.copy(os.path.join(FIXTURES, "broken", "malformed.xml"), target)
    with pytest.raises(ValueError, match=f"Malformed XML annotation file {target}"):
        load_imagenet_vid(
            root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir, num_workers=num_workers
        )
    shutil.copy(os.path.join(FIXTURES, "broken", "unknown_class.xml"), target)
    with pytest.raises(ValueError, match=f"{target} has an object of unknown class 'n99999999'"):
        load_imagenet_vid(
            root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir, num_workers=num_workers
        )


def test_parallel_parse_equals_serial_parse(root, monkeypatch):
    paths = [_annotation(root, "VID", f"{TRAIN}/{t:06d}") for t in range(4)] * 3
    index = imagenet_vid.class_index(VID_CLASSES)
    serial = parse_annotation_files(paths, index, num_workers=1)
    monkeypatch.setattr(vid_xml, "_MIN_FILES_PER_WORKER", 1)  # a pool even for 12 files
    parallel = parse_annotation_files(paths, index, num_workers=2, chunk_size=4)
    for name, a, b in zip(serial._fields, serial, parallel):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert serial.offsets.tolist() == [0, 0, 1, 3, 5, 5, 6, 8, 10, 10, 11, 13, 15]


def test_bad_lists_and_missing_files_are_named(root, cache_dir):
    lists = os.path.join(root, "ImageSets")
    bad = os.path.join(lists, "bad.txt")
    cases = {
        f"{TRAIN} 1 4 4\n": f"{bad}:1: frame 4 is outside snippet {TRAIN}",
        f"{TRAIN} 1 1 4\n{TRAIN} 1 2 5\n": f"{bad}:2: snippet {TRAIN} has 5 frames",
        f"{TRAIN} 1 x 4\n": f"{bad}:1: 'x' is not an integer",
        f"{TRAIN} 1 1\n": f"{bad}:1: expected 1, 2 or 4 fields",
        f"{TRAIN} 1 1 4\n{TRAIN} 1 1 4\n": f"{bad} lists frame .*000001.JPEG more than once",
    }
    for text, message in cases.items():
        with open(bad, "w") as f:
            f.write(text)
        with pytest.raises(ValueError, match=message):
            load_imagenet_vid(root, "ImageSets/bad.txt", cache_dir=cache_dir)
    os.remove(_annotation(root, "VID", f"{TRAIN}/000003"))
    for use_cache in (True, False):
        with pytest.raises(FileNotFoundError, match=f"{TRAIN}/000003.xml does not exist"):
            load_imagenet_vid(
                root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir, use_cache=use_cache
            )
    with pytest.raises(FileNotFoundError, match="nothing.txt does not exist"):
        load_imagenet_vid(root, "ImageSets/nothing.txt", cache_dir=cache_dir)


def test_cache_hit_and_invalidation(root, cache_dir, monkeypatch):
    def load():
        return load_imagenet_vid(root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir)

    first = load()
    (entry,) = [name for name in os.listdir(cache_dir) if name.startswith("annotations-")]
    calls = []
    real_parse = imagenet_vid.parse_annotation_files
    monkeypatch.setattr(
        imagenet_vid,
        "parse_annotation_files",
        lambda *a, **k: calls.append(1) or real_parse(*a, **k),
    )
    assert load() == first and calls == []  # served from the cache

    path = _annotation(root, "VID", f"{TRAIN}/000001")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("<xmin>20</xmin>", "<xmin>21</xmin>"))  # same size: mtime tells
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    changed = load()
    assert calls == [1] and changed[0]["annotations"][0]["bbox"] == [21.0, 20.0, 70.0, 50.0]
    assert load() == changed and calls == [1]  # the new entry replaced the old one
    assert [name for name in os.listdir(cache_dir) if name.startswith("annotations-")] == [entry]

    with open(os.path.join(cache_dir, entry), "wb") as f:
        f.write(b"truncated")  # an unreadable entry is a miss, not an error
    assert load() == changed and calls == [1, 1]


def test_cocovid_json(tmp_path):
    json_file = os.path.join(FIXTURES, "cocovid", "videos.json")
    records = load_cocovid_json(json_file, "/images", check_frames=False)
    _check_record_contract(records)
    assert [(r["video_id"], r["frame_idx"], r["image_id"]) for r in records] == [
        ("clip_a", 0, 12), ("clip_a", 1, 13), ("clip_a", 2, 14),
        ("clip_b", 0, 11), ("clip_b", 1, 10),
    ]  # fmt: skip
    assert [r["video_length"] for r in records] == [3, 3, 3, 2, 2]
    assert records[0]["file_name"] == "/images/clip_a/000000.jpg"
    (car,) = records[4]["annotations"]
    # Categories in id order (dog 3, car 7) -> 0, 1; xywh -> xyxy; instance_id -> track_id.
    assert car["bbox"] == [1, 2, 11, 22] and car["category_id"] == 1
    assert car["track_id"] == 5 and car["occluded"] and not car["generated"]
    (dog,) = records[0]["annotations"]
    assert dog["track_id"] == -1 and dog["category_id"] == 0 and "iscrowd" not in dog
    assert records[1]["annotations"][0]["iscrowd"] == 1
    assert build_frame_table(records)["clip_a"] == tuple(r["file_name"] for r in records[:3])

    subset = load_cocovid_json(json_file, "/images", vid_train_frames_only=True, check_frames=False)
    assert [(r["video_id"], r["frame_idx"]) for r in subset] == [("clip_a", 0), ("clip_a", 2)]
    assert build_frame_table(subset)["clip_a"][1] == "/images/clip_a/000001.jpg"

    named = load_cocovid_json(json_file, "/images", class_names=["car", "dog"], check_frames=False)
    assert named[4]["annotations"][0]["category_id"] == 0
    with pytest.raises(ValueError, match=f"{json_file}: category 'dog' .* not one of"):
        load_cocovid_json(json_file, "/images", class_names=["car"], check_frames=False)


def test_cocovid_errors_name_the_file(tmp_path):
    malformed = os.path.join(FIXTURES, "cocovid", "malformed.json")
    with pytest.raises(ValueError, match=f"Malformed json file {malformed}"):
        load_cocovid_json(malformed, "/images")
    with open(os.path.join(FIXTURES, "cocovid", "videos.json")) as f:
        good = f.read()
    path = str(tmp_path / "bad.json")
    cases = {
        '"category_id": 7': ("category_id 9", '"category_id": 9'),
        '"image_id": 10': ("on image 99, which is not in 'images'", '"image_id": 99'),
        '"video_id": 2': ("in video 5, which is not in 'videos'", '"video_id": 5'),
        '"frame_id": 1\n': ("repeated or negative frame_id", '"frame_id": 0\n'),
        '"videos"': ("has no 'videos' list", '"clips"'),
    }
    for old, (message, new) in cases.items():
        with open(path, "w") as f:
            f.write(good.replace(old, new, 1))
        with pytest.raises(ValueError, match=f"{path}.*{message}"):
            load_cocovid_json(path, "/images", check_frames=False)


def test_frame_table_errors_name_the_video():
    def record(video, index, length, name):
        return dict(video_id=video, frame_idx=index, video_length=length, file_name=name)

    with pytest.raises(ValueError, match="'v'.* not numbered by frame index"):
        build_frame_table([record("v", 0, 3, "/a/first.jpg")])
    with pytest.raises(ValueError, match="'v': frame 0 is both /a/0.jpg and /b/0.jpg"):
        build_frame_table([record("v", 0, 1, "/a/0.jpg"), record("v", 0, 1, "/b/0.jpg")])
    with pytest.raises(ValueError, match="'v' has records with video_length 2 and 3"):
        build_frame_table([record("v", 0, 2, "/a/0.jpg"), record("v", 1, 3, "/a/1.jpg")])
    with pytest.raises(ValueError, match="'v': frame 2 .* is outside 0..1"):
        build_frame_table([record("v", 2, 2, "/a/2.jpg")])
    # One-based numbers are fine: the offset is the same for every listed frame.
    table = build_frame_table([record("v", 0, 3, "/a/0001.png"), record("v", 2, 3, "/a/0003.png")])
    assert list(table["v"]) == ["/a/0001.png", "/a/0002.png", "/a/0003.png"]


def test_registration_is_lazy_and_sets_metadata(root, cache_dir, tmp_path):
    names = {
        "_test_vid": dict(root=root, image_set="ImageSets/VID_val_videos.txt"),
        "_test_vid_split": dict(root=root, split="train", class_names=["car", "dog"]),
        "_test_det": dict(
            kind="imagenet_det", root=root, image_set="ImageSets/DET_train_30classes.txt"
        ),
        "_test_missing": dict(root=str(tmp_path / "nowhere"), image_set="ImageSets/x.txt"),
        "_test_coco": dict(
            kind="cocovid",
            json_file=os.path.join(FIXTURES, "cocovid", "videos.json"),
            image_root="/i",
            check_frames=False,
        ),
    }
    try:
        for name, kwargs in names.items():
            register_video_dataset(name, cache_dir=cache_dir, **kwargs)  # reads nothing
        assert not os.path.exists(cache_dir)
        meta = MetadataCatalog.get("_test_vid")
        assert meta.evaluator_type == "vid" and meta.thing_classes == list(VID_CLASSES)
        assert (meta.dataset_root, meta.image_set, meta.dataset_kind) == (
            root,
            "ImageSets/VID_val_videos.txt",
            "imagenet_vid",
        )
        assert MetadataCatalog.get("_test_vid_split").thing_classes == ["car", "dog"]
        assert not hasattr(MetadataCatalog.get("_test_coco"), "thing_classes")

        assert DatasetCatalog.get("_test_vid") == load_imagenet_vid(
            root, "ImageSets/VID_val_videos.txt", cache_dir=cache_dir
        )
        assert len(DatasetCatalog.get("_test_vid_split")) == 4
        assert [r["video_length"] for r in DatasetCatalog.get("_test_det")] == [1, 1]
        assert len(DatasetCatalog.get("_test_coco")) == 5
        assert MetadataCatalog.get("_test_coco").thing_classes == ["dog", "car"]
        with pytest.raises(FileNotFoundError, match="nowhere/ImageSets/x.txt does not exist"):
            DatasetCatalog.get("_test_missing")
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_registration_checks_its_arguments():
    with pytest.raises(ValueError, match="'x'.*kind must be one of"):
        register_video_dataset("x", kind="voc", root="r")
    with pytest.raises(ValueError, match="'x' of kind 'cocovid' needs image_root="):
        register_video_dataset("x", kind="cocovid", json_file="a.json")
    with pytest.raises(ValueError, match="'x'.*image_set or split, not both"):
        register_video_dataset("x", root="r", image_set="a.txt", split="val")
    assert "x" not in DatasetCatalog.list()


def test_builtin_names_are_registered_without_reading(tmp_path, monkeypatch):
    for name in BUILTIN_DATASETS:
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "vid"
    assert len(MetadataCatalog.get("imagenet_vid_val").thing_classes) == 30
    assert len(MetadataCatalog.get("synthetic_vid_val").thing_classes) == 5
    # The root is read when a dataset is loaded, from the environment at that time.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match=f"{tmp_path}/ILSVRC2015/ImageSets/VID_val_frames.txt does not exist, and neither do"
        f" the official lists \\({tmp_path}/ILSVRC2015/ImageSets/VID/val.txt\\)",
    ):
        DatasetCatalog.get("imagenet_vid_val")


def _cocovid(tmp_path, edit=None):
    """The CocoVID fixture with images under tmp_path/images; ``edit(data)`` changes it first."""
    with open(os.path.join(FIXTURES, "cocovid", "videos.json")) as f:
        data = json.load(f)
    if edit is not None:
        edit(data)
    for image in data["images"]:
        path = tmp_path / "images" / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (image["width"], image["height"])).save(path)
    json_file = str(tmp_path / "videos.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, str(tmp_path / "images")


def test_cocovid_boxes_outside_the_image_or_of_negative_size(tmp_path):
    def box(bbox):
        return lambda data: data["annotations"][0].update(bbox=bbox)  # image 10: 64x48

    # Partly outside: clipped to the image (x1 = 60 + 10 > 64, y0 = -5 < 0).
    records = load_cocovid_json(*_cocovid(tmp_path, box([60, -5, 10, 20])))
    assert records[4]["annotations"][0]["bbox"] == [60, 0, 64, 15]
    for bbox, message in [
        ([10, 10, -4, 5], "negative width or height"),
        ([10, 10, 4, -5], "negative width or height"),
        ([64, 10, 4, 5], "wholly outside its 64x48 image 10"),
        ([-9, 10, 4, 5], "wholly outside"),
        ([10, 48, 4, 5], "wholly outside"),
    ]:
        json_file, images = _cocovid(tmp_path, box(bbox))
        with pytest.raises(ValueError, match=f"{json_file}: annotation 1 .*{message}"):
            load_cocovid_json(json_file, images)


def test_missing_frames_are_found_at_load_and_named(root, cache_dir, tmp_path, monkeypatch):
    # Frame 2 of the training snippet is not listed, but may be a support frame.
    support = os.path.join(root, "Data", "VID", TRAIN, "000002.JPEG")
    os.remove(support)
    for use_cache in (True, False):
        with pytest.raises(FileNotFoundError, match=f"1 frame file of .* is missing: {support}$"):
            load_imagenet_vid(
                root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir, use_cache=use_cache
            )
    os.remove(os.path.join(root, "Data", "DET", DET2 + ".JPEG"))
    with pytest.raises(FileNotFoundError, match="1 frame file of .*DET_train_30classes.txt"):
        load_imagenet_det(root, "ImageSets/DET_train_30classes.txt", cache_dir=cache_dir)
    assert load_imagenet_det(
        root, "ImageSets/DET_train_30classes.txt", cache_dir=cache_dir, check_frames=False
    )
    json_file, images = _cocovid(tmp_path)
    os.remove(os.path.join(images, "clip_a", "000001.jpg"))
    with pytest.raises(FileNotFoundError, match=f"{json_file} is missing: .*clip_a/000001.jpg"):
        load_cocovid_json(json_file, images)


def test_corrupt_frames_are_found_at_load_and_named(root, cache_dir, tmp_path):
    # Frame 2 of the training snippet is not listed, but may be a support frame.
    support = os.path.join(root, "Data", "VID", TRAIN, "000002.JPEG")
    with open(support, "rb") as f:
        data = f.read()
    with open(support, "wb") as f:
        f.write(data[: len(data) // 2])
    for use_cache in (True, False):
        with pytest.raises(ValueError) as raised:
            load_imagenet_vid(
                root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir, use_cache=use_cache
            )
        assert str(raised.value) == (
            f"1 frame file of {os.path.join(root, 'ImageSets/VID_train_15frames.txt')} cannot "
            f"be read as images: {support} (truncated: no JPEG end marker FF D9 in its last "
            f"{min(len(data) // 2, 1024)} bytes)"
        )
    det = os.path.join(root, "Data", "DET", DET2 + ".JPEG")
    with open(det, "wb") as f:
        f.write(os.urandom(2000).replace(b"\xff", b"\x00"))
    with pytest.raises(ValueError, match=f"cannot be read as images: {det} \\(not an image"):
        load_imagenet_det(root, "ImageSets/DET_train_30classes.txt", cache_dir=cache_dir)
    json_file, images = _cocovid(tmp_path)
    open(os.path.join(images, "clip_a", "000001.jpg"), "wb").close()
    with pytest.raises(ValueError, match=f"{json_file} cannot .*clip_a/000001.jpg \\(an empty"):
        load_cocovid_json(json_file, images)


def test_the_frame_check_is_cached_until_a_frame_folder_changes(root, cache_dir, monkeypatch):
    def load():
        return load_imagenet_vid(root, "ImageSets/VID_train_15frames.txt", cache_dir=cache_dir)

    load()
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(frame_files.os, "listdir", lambda p: listed.append(p) or real_listdir(p))
    load()
    assert listed == []  # cached: no folder listed again
    os.remove(os.path.join(root, "Data", "VID", TRAIN, "000000.JPEG"))
    with pytest.raises(FileNotFoundError, match="000000.JPEG"):
        load()
    assert listed == [os.path.join(root, "Data", "VID", TRAIN)]


def test_other_frame_extensions(root, cache_dir):
    write_frames(root, ext=".jpg")
    val = os.path.join(root, "Data", "VID", VAL)
    for t in range(3):
        os.remove(os.path.join(val, f"{t:06d}.JPEG"))
    with pytest.raises(FileNotFoundError, match="000000.JPEG"):
        load_imagenet_vid(root, "ImageSets/VID_val_frames.txt", cache_dir=cache_dir)
    records = load_imagenet_vid(
        root, "ImageSets/VID_val_frames.txt", image_ext=".jpg", cache_dir=cache_dir
    )
    assert [os.path.basename(r["file_name"]) for r in records] == [f"{t:06d}.jpg" for t in range(3)]
    try:
        register_video_dataset(
            "_test_jpg", root=root, split="val", image_ext=".jpg", cache_dir=cache_dir
        )
        assert DatasetCatalog.get("_test_jpg") == records
    finally:
        DatasetCatalog.remove("_test_jpg")
        MetadataCatalog.remove("_test_jpg")


def test_registration_rejects_unknown_and_misplaced_arguments(root):
    with pytest.raises(TypeError, match="clas_names"):
        register_video_dataset("x", root=root, split="val", clas_names=["cat"])
    with pytest.raises(ValueError, match="'x' of kind 'cocovid' takes no root="):
        register_video_dataset("x", kind="cocovid", json_file="a.json", image_root="i", root=root)
    with pytest.raises(ValueError, match="'x' of kind 'imagenet_vid' takes no json_file="):
        register_video_dataset("x", root=root, split="val", json_file="a.json")
    with pytest.raises(ValueError, match="image_ext is for the ImageNet kinds"):
        register_video_dataset("x", kind="cocovid", json_file="a", image_root="i", image_ext=".jpg")
    assert "x" not in DatasetCatalog.list()
    try:
        register_video_dataset("_test_meta", root=root, split="val", metadata={"note": "mine"})
        assert MetadataCatalog.get("_test_meta").note == "mine"
    finally:
        DatasetCatalog.remove("_test_meta")
        MetadataCatalog.remove("_test_meta")


def test_dataset_classes_reads_cocovid_categories_without_loading(tmp_path, monkeypatch):
    json_file, images = _cocovid(tmp_path)
    names = {"_test_coco_all": None, "_test_coco_named": ["car", "dog"]}
    try:
        for name, class_names in names.items():
            register_video_dataset(
                name,
                kind="cocovid",
                json_file=json_file,
                image_root=images,
                class_names=class_names,
            )
        monkeypatch.setattr(register, "load_cocovid_json", None)  # not called
        assert dataset_classes("_test_coco_all") == ["dog", "car"]
        assert MetadataCatalog.get("_test_coco_all").thing_dataset_id_to_contiguous_id == {
            3: 0,
            7: 1,
        }
        assert dataset_classes("_test_coco_named") == ["car", "dog"]
        assert MetadataCatalog.get("_test_coco_named").thing_dataset_id_to_contiguous_id == {
            3: 1,
            7: 0,
        }
        assert dataset_classes("synthetic_vid_val") == list(SYNTHETIC_CLASSES)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_cocovid_conditions_and_visibility_reach_the_records(tmp_path):
    def tag(data):
        data["images"][0]["conditions"] = ["motion_blur", "defocus"]  # image 10
        data["annotations"][0]["visibility"] = 0.25  # on image 10, no "occluded"
        data["annotations"][1]["visibility"] = 0.75

    records = load_cocovid_json(*_cocovid(tmp_path, tag))
    image_10 = next(r for r in records if r["image_id"] == 10)
    assert image_10["conditions"] == ("motion_blur", "defocus")
    assert sum("conditions" in r for r in records) == 1
    (ann,) = image_10["annotations"]
    assert ann["visible"] == 0.25 and ann["occluded"]  # visibility below 0.5: occluded
    visible = [a for r in records for a in r["annotations"] if a.get("visible") == 0.75]
    assert len(visible) == 1 and not visible[0]["occluded"]
    for field, value, message in [
        ("conditions", "motion_blur", "conditions 'motion_blur', not a list of strings"),
        ("visibility", 1.5, "visibility 1.5, not a number in \\[0, 1\\]"),
    ]:
        section = "images" if field == "conditions" else "annotations"
        json_file, images = _cocovid(tmp_path, lambda data: data[section][0].update({field: value}))
        with pytest.raises(ValueError, match=message):
            load_cocovid_json(json_file, images)
