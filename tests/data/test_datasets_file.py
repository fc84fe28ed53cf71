"""Datasets declared in a file (DATASETS.FILE), and the checks of a config against them."""

import json
import os
import shutil

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import vod_d2.data.datasets.datasets_file as datasets_file
from vod_d2.data import check_datasets, model_num_classes, register_datasets_from_config
from vod_d2.data.checks import NUM_CLASSES_KEYS
from vod_d2.data.datasets import (
    load_cocovid_json,
    load_imagenet_det,
    load_imagenet_vid,
    register_datasets_file,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
DATASETS_YAML = """\
my_coco:
  kind: cocovid
  json_file: annotations/videos.json
  image_root: frames
my_vid_val:
  kind: imagenet_vid
  root: ILSVRC2015
  split: val
  class_names: [airplane]
my_det:
  kind: imagenet_det
  root: ILSVRC2015
  image_set: ImageSets/DET_train_30classes.txt
"""


@pytest.fixture(autouse=True)
def _unregister():
    """Remove what a test registered, so that names can be reused."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        datasets_file._REGISTERED.pop(name, None)


@pytest.fixture
def project(root, tmp_path):
    """A folder with a datasets file, a CocoVID json and frames, and an ILSVRC2015 tree."""
    folder = tmp_path / "project"
    shutil.move(root, folder / "ILSVRC2015")
    (folder / "annotations").mkdir()
    shutil.copy(os.path.join(FIXTURES, "cocovid", "videos.json"), folder / "annotations")
    with open(folder / "annotations" / "videos.json") as f:
        for image in json.load(f)["images"]:
            (folder / "frames" / image["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (image["width"], image["height"])).save(
                folder / "frames" / image["file_name"]
            )
    (folder / "datasets.yaml").write_text(DATASETS_YAML)
    return folder


def test_a_datasets_file_registers_every_kind_relative_to_its_folder(project, tmp_path, cfg):
    os.chdir(tmp_path)  # elsewhere: paths are relative to the file, not the working directory
    try:
        cfg.DATASETS.FILE = str(project / "datasets.yaml")
        assert register_datasets_from_config(cfg) == ["my_coco", "my_vid_val", "my_det"]
        cache = os.path.join(project, "ILSVRC2015")
        assert DatasetCatalog.get("my_coco") == load_cocovid_json(
            str(project / "annotations" / "videos.json"), str(project / "frames")
        )
        assert DatasetCatalog.get("my_vid_val") == load_imagenet_vid(
            cache, split="val", class_names=["airplane"]
        )
        assert DatasetCatalog.get("my_det") == load_imagenet_det(
            cache, "ImageSets/DET_train_30classes.txt"
        )
        assert MetadataCatalog.get("my_vid_val").thing_classes == ["airplane"]
        # Every set-up reads the file again: nothing new, no error.
        assert register_datasets_from_config(cfg) == ["my_coco", "my_vid_val", "my_det"]
    finally:
        os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_bad_datasets_files_are_named(project, cfg):
    path = project / "bad.yaml"
    cases = {
        "my_x:\n  kind: cocovid\n  clas_names: [a]\n": "dataset 'my_x' has an unknown key "
        "'clas_names'; did you mean 'class_names'",
        "my_x:\n  kind: voc\n  root: r\n": "'my_x': kind must be one of",
        "my_x: [1, 2]\n": "'my_x' must map a dataset name to its arguments",
        "- a\n- b\n": "must map dataset names to their arguments",
        "my_x: {kind: cocovid\n": "Malformed datasets file",
        "synthetic_vid_val:\n  kind: imagenet_vid\n  root: r\n  split: val\n": "dataset "
        "'synthetic_vid_val' is already registered \\(built-in or in code\\)",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as error:
            register_datasets_file(str(path))
        assert str(path) in str(error.value), text
    # Another definition under a name a file registered is an error too.
    register_datasets_file(str(project / "datasets.yaml"))
    path.write_text("my_vid_val:\n  kind: imagenet_vid\n  root: ILSVRC2015\n  split: train\n")
    with pytest.raises(ValueError, match="'my_vid_val' is already registered \\(by .*datasets"):
        register_datasets_file(str(path))
    cfg.DATASETS.FILE = str(project / "missing.yaml")
    with pytest.raises(FileNotFoundError, match="DATASETS.FILE .*missing.yaml does not exist"):
        register_datasets_from_config(cfg)


def test_every_dataset_name_is_checked_before_training(cfg):
    cfg.DATASETS.TEST = ("synthetic_vid_vall",)
    with pytest.raises(
        ValueError,
        match="DATASETS.TEST names 'synthetic_vid_vall', which is not a registered dataset "
        "\\(did you mean 'synthetic_vid_val'.*declare it in a datasets file named by DATASETS.FILE",
    ):
        check_datasets(cfg)
    cfg.DATASETS.TEST = ("synthetic_vid_val",)
    cfg.DATASETS.TRAIN = ("synthetic_vid_train", "mine")
    cfg.DATASETS.FILE = "my.yaml"
    with pytest.raises(ValueError, match="DATASETS.TRAIN names 'mine'.*my.yaml\\) does not def"):
        check_datasets(cfg)
    check_datasets(cfg, train=False)  # evaluation reads DATASETS.TEST only
    cfg.DATASETS.TRAIN = ()
    with pytest.raises(ValueError, match="DATASETS.TRAIN is empty"):
        check_datasets(cfg)


def test_the_class_count_is_checked_against_every_dataset(cfg, caplog):
    check_datasets(cfg)  # the synthetic config: 5 classes
    for wrong in (4, 3, 30):
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = wrong
        with pytest.raises(ValueError) as error:
            check_datasets(cfg)
        assert str(error.value) == (
            f"MODEL.ROI_HEADS.NUM_CLASSES is {wrong} but dataset 'synthetic_vid_train' has 5 "
            "classes (airplane, bird, car, dog, zebra): set MODEL.ROI_HEADS.NUM_CLASSES 5"
        )
    # A dataset without class names cannot be checked: a warning, not an error.
    DatasetCatalog.register("_no_classes", lambda: [])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.DATASETS.TEST = ("_no_classes",)
    check_datasets(cfg)
    assert "'_no_classes' has no thing_classes" in caplog.text


def test_the_model_class_count_comes_from_the_meta_architecture_key(cfg, monkeypatch):
    assert model_num_classes(cfg) == ("MODEL.ROI_HEADS.NUM_CLASSES", 5)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.RETINANET.NUM_CLASSES = 7
    assert model_num_classes(cfg) == ("MODEL.RETINANET.NUM_CLASSES", 7)
    # A meta-architecture of its own declares its key.
    cfg.MODEL.META_ARCHITECTURE = "MyDetector"
    monkeypatch.setitem(NUM_CLASSES_KEYS, "MyDetector", "MODEL.SEM_SEG_HEAD.NUM_CLASSES")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 9
    assert model_num_classes(cfg) == ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9)
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES is 9 but dataset"):
        check_datasets(cfg)
