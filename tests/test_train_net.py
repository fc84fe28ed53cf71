"""
train_net.py from the command line: the README's custom-data example end to end, and the checks
that fail in one line before anything is launched.
"""

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser

import vod_d2.data.datasets.datasets_file as datasets_file
from vod_d2.data.datasets import SYNTHETIC_CLASSES, load_imagenet_vid
from vod_d2.data.synthetic import generate_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]

# The README's "Your own videos" example, verbatim.
README_DATASETS_FILE = """\
# my_datasets.yaml: paths are relative to this file's folder
my_videos_train:      # CocoVID json: videos, images (video_id, frame_id), annotations (instance_id)
  kind: cocovid
  json_file: annotations/train.json
  image_root: frames
my_videos_val:
  kind: cocovid
  json_file: annotations/val.json
  image_root: frames
"""
README_COMMAND = """\
python train_net.py --config-file configs/synthetic/single_frame.yaml \\
  DATASETS.FILE my_datasets.yaml DATASETS.TRAIN '("my_videos_train",)' \\
  DATASETS.TEST '("my_videos_val",)' MODEL.ROI_HEADS.NUM_CLASSES 3 OUTPUT_DIR output/my_videos"""
# Appended to it here: test sizes (2 iterations on 64 px frames), every detection kept.
TINY = (
    "SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 SOLVER.WARMUP_ITERS 1 INPUT.MIN_SIZE_TRAIN '(64,)' "
    "INPUT.MIN_SIZE_TEST 64 MODEL.RPN.POST_NMS_TOPK_TRAIN 20 MODEL.RPN.POST_NMS_TOPK_TEST 20 "
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 DATALOADER.NUM_WORKERS 0 "
    "TEST.VID_EVAL.COCO_METRICS False"
)
# The example's 3 classes, with the json's own (not contiguous) category ids.
CATEGORIES = {"airplane": 4, "car": 7, "zebra": 9}


def _cocovid(records, frames_dir):
    """A CocoVID json of synthetic frame records, keeping the objects of CATEGORIES."""
    data = {"categories": [{"id": i, "name": n} for n, i in CATEGORIES.items()]}
    data.update(videos=[], images=[], annotations=[])
    videos = {}
    for record in records:
        video = videos.setdefault(record["video_id"], len(videos) + 1)
        if video > len(data["videos"]):
            data["videos"].append({"id": video, "name": record["video_id"]})
        name = f"{video}/{record['frame_idx']:06d}.jpg"
        os.makedirs(os.path.join(frames_dir, str(video)), exist_ok=True)
        shutil.copy(record["file_name"], os.path.join(frames_dir, name))
        image_id = len(data["images"]) + 1
        image = dict(id=image_id, file_name=name, video_id=video, frame_id=record["frame_idx"])
        data["images"].append(dict(image, height=record["height"], width=record["width"]))
        for ann in record["annotations"]:
            category = SYNTHETIC_CLASSES[ann["category_id"]]
            if category in CATEGORIES:
                x0, y0, x1, y1 = ann["bbox"]
                box = dict(bbox=[x0, y0, x1 - x0, y1 - y0], instance_id=ann["track_id"])
                box.update(category_id=CATEGORIES[category], image_id=image_id)
                data["annotations"].append(dict(box, id=len(data["annotations"]) + 1))
    return data


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """
    A folder as the README example expects it (train_net.py, configs/, my_datasets.yaml,
    annotations/, frames/), its CocoVID data derived from a small synthetic tree.
    """
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(REPO_ROOT / "train_net.py", folder)
    shutil.copytree(REPO_ROOT / "configs", folder / "configs")
    synthetic = generate_synthetic_dataset(
        str(folder / "synthetic"),
        num_train_videos=2,
        num_val_videos=1,
        num_det_images=0,
        num_frames=(40, 40),
        size=(64, 80),
    )
    (folder / "annotations").mkdir()
    for split, image_set in (("train", "VID_train_15frames.txt"), ("val", "VID_val_videos.txt")):
        records = load_imagenet_vid(
            synthetic, f"ImageSets/{image_set}", class_names=SYNTHETIC_CLASSES, use_cache=False
        )
        with open(folder / "annotations" / f"{split}.json", "w") as f:
            json.dump(_cocovid(records, str(folder / "frames" / split)), f)
    # The train and val images are in one folder in the example; keep their names apart.
    for split in ("train", "val"):
        with open(folder / "annotations" / f"{split}.json") as f:
            data = json.load(f)
        for image in data["images"]:
            image["file_name"] = f"{split}/{image['file_name']}"
        with open(folder / "annotations" / f"{split}.json", "w") as f:
            json.dump(data, f)
    (folder / "my_datasets.yaml").write_text(README_DATASETS_FILE)
    # `python` as the README writes it: this interpreter. Not a symlink to sys.executable: a
    # virtualenv's python reached through a link outside the virtualenv's bin/ finds no
    # pyvenv.cfg beside it and runs the base interpreter, without the virtualenv's packages.
    (folder / "bin").mkdir()
    python = folder / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return folder


def _run(project, command, timeout=300):
    env = {
        **os.environ,
        "PATH": f"{project / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", "-c", command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_readme_python_is_the_interpreter_running_the_tests(project):
    run = _run(project, "python -c 'import sys; print(sys.prefix, sys.executable)'")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [sys.prefix, sys.executable]


def test_readme_custom_data_example_trains_and_evaluates(project):
    run = _run(project, f"{README_COMMAND} {TINY}")
    assert run.returncode == 0, run.stderr[-3000:]
    output = project / "output" / "my_videos"
    assert (output / "model_final.pth").is_file()
    log = (output / "log.txt").read_text()
    assert "Per-category ImageNet VID AP" in log and "VID evaluation of 'my_videos_val'" in log
    for name in CATEGORIES:
        assert f"| {name} " in log, name
    # The detections dump uses the json's own category ids.
    with open(output / "inference" / "my_videos_val" / "my_videos_val_detections.json") as f:
        detections = json.load(f)
    assert detections and {d["category_id"] for d in detections} <= set(CATEGORIES.values())


def test_every_process_of_a_multi_process_run_reads_the_datasets_file(project):
    weights = project / "output" / "my_videos" / "model_final.pth"
    if not weights.is_file():
        pytest.skip("needs the model of the README example's test")
    command = (
        f"{README_COMMAND} {TINY} OUTPUT_DIR output/two MODEL.WEIGHTS {weights}".replace(
            "python train_net.py", "python train_net.py --num-gpus 2 --eval-only"
        )
        + " MODEL.DEVICE cpu"
    )
    run = _run(project, command)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "VID evaluation of 'my_videos_val'" in (project / "output" / "two" / "log.txt").read_text()
    )


@pytest.fixture
def train_net(project, monkeypatch):
    """train_net.py as a module, run from the example's folder; its registrations undone."""
    spec = importlib.util.spec_from_file_location("train_net", project / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(project)
    before = set(DatasetCatalog.list())
    yield module
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        datasets_file._REGISTERED.pop(name, None)


def _args(*opts, eval_only=False):
    """train_net.py's arguments: the README command's, then ``opts``."""
    argv = shlex.split(README_COMMAND.replace("\\\n", " "))[2:] + list(opts)
    return default_argument_parser().parse_args((["--eval-only"] if eval_only else []) + argv)


@pytest.mark.parametrize(
    "opts, error, message",
    [
        (
            ("DATASETS.TEST", '("my_videos_vall",)'),
            ValueError,
            "DATASETS.TEST names 'my_videos_vall', which is not a registered dataset (did you "
            "mean 'my_videos_val'",
        ),
        (
            ("MODEL.ROI_HEADS.NUM_CLASSES", "4"),
            ValueError,
            "MODEL.ROI_HEADS.NUM_CLASSES is 4 but dataset 'my_videos_train' has 3 classes "
            "(airplane, car, zebra): set MODEL.ROI_HEADS.NUM_CLASSES 3",
        ),
        (
            ("MODEL.WEIGHTS", "nowhere/model.pth"),
            FileNotFoundError,
            "MODEL.WEIGHTS nowhere/model.pth does not exist",
        ),
        (
            ("DATASETS.FILE", "missing.yaml"),
            FileNotFoundError,
            "DATASETS.FILE missing.yaml does not exist",
        ),
    ],
)
def test_bad_configs_are_found_before_launching(train_net, opts, error, message):
    train_net.check(_args())  # the example itself is fine
    with pytest.raises(error) as raised:
        train_net.check(_args(*opts))
    assert str(raised.value).startswith(message)


def test_eval_only_of_a_from_scratch_config_needs_weights_in_one_line(project, train_net):
    with pytest.raises(ValueError, match="--eval-only needs trained weights"):
        train_net.check(_args(eval_only=True))
    train_net.check(_args("MODEL.WEIGHTS", "my_datasets.yaml", eval_only=True))  # a file
    # From the command line: one line, no traceback, nothing launched.
    run = _run(project, README_COMMAND.replace("train_net.py", "train_net.py --eval-only"))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "train_net.py: error: --eval-only needs trained weights, but MODEL.WEIGHTS is empty in "
        "configs/synthetic/single_frame.yaml (it trains from scratch), so a randomly initialised "
        "model would be evaluated: add MODEL.WEIGHTS path/to/model_final.pth"
    )
