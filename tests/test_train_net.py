"""
train_net.py from the command line: the README's custom-data example end to end, and the checks
that fail in one line before anything is launched.
"""

import importlib.util
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from _testing import run_readme_command
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

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
    return folder


def test_readme_custom_data_example_trains_and_evaluates(project):
    run = run_readme_command(project, f"{README_COMMAND} {TINY}")
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
    run = run_readme_command(project, command)
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
    torch.save({"model": {}}, "weights.pth")
    train_net.check(_args("MODEL.WEIGHTS", "weights.pth", eval_only=True))  # a checkpoint
    # From the command line: one line, no traceback, nothing launched.
    run = run_readme_command(
        project, README_COMMAND.replace("train_net.py", "train_net.py --eval-only")
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "train_net.py: error: --eval-only needs trained weights, but MODEL.WEIGHTS is empty in "
        "configs/synthetic/single_frame.yaml (it trains from scratch), so a randomly initialised "
        "model would be evaluated: add MODEL.WEIGHTS path/to/model_final.pth"
    )


def _one_line_error(run):
    """The error line of a run that failed before or while training, with no traceback."""
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
    return run.stderr.strip().splitlines()[-1]


def _broken_copy(project, folder, edit):
    """The example's data copied to ``folder``, changed by ``edit(folder)``; its datasets file."""
    for name in ("annotations", "frames"):
        shutil.copytree(project / name, folder / name)
    edit(folder)
    (folder / "my_datasets.yaml").write_text(README_DATASETS_FILE)
    return folder / "my_datasets.yaml"


def _edit_json(edit):
    def apply(folder):
        path = folder / "annotations" / "train.json"
        data = json.loads(path.read_text())
        edit(data, folder)
        path.write_text(json.dumps(data))

    return apply


def _corrupt(data, folder):
    path = folder / "frames" / data["images"][0]["file_name"]
    path.write_bytes(b"\x12\x34" + bytes(range(256)) * 8)  # not an image


@pytest.mark.parametrize(
    "edit, num_gpus, error",
    [
        (
            _edit_json(lambda data, _: data["images"][5].update(file_name="train/1/gone.jpg")),
            2,
            "1 frame file of {annotations}/train.json is missing: {frames}/train/1/gone.jpg",
        ),
        (
            _edit_json(lambda data, _: data["annotations"][0].update(bbox=[10, 10, -4, 5])),
            1,
            "{annotations}/train.json: annotation 1 (image 1) has bbox [10, 10, -4, 5] with a "
            "negative width or height; COCO boxes are [x, y, w, h]",
        ),
        (
            _edit_json(_corrupt),
            1,
            "1 frame file of {annotations}/train.json cannot be read as images: "
            "{frames}/{first} (not an image: it starts with 12 34 00 01, not a JPEG "
            "or PNG signature)",
        ),
    ],
    ids=["missing frame, 2 processes", "bad box", "corrupt frame"],
)
def test_data_errors_are_one_line_before_anything_is_written(
    project, tmp_path, edit, num_gpus, error
):
    datasets = _broken_copy(project, tmp_path, edit)
    output = tmp_path / "output"
    command = README_COMMAND.replace("train_net.py", f"train_net.py --num-gpus {num_gpus}")
    run = run_readme_command(
        project, f"{command} {TINY} DATASETS.FILE {datasets} OUTPUT_DIR {output}"
    )
    first = json.loads((tmp_path / "annotations" / "train.json").read_text())["images"][0]
    assert _one_line_error(run) == "train_net.py: error: " + error.format(
        annotations=tmp_path / "annotations", frames=tmp_path / "frames", first=first["file_name"]
    )
    assert run.stderr.count("train_net.py: error:") == 1  # one process's output
    assert not output.exists()


def test_a_frame_unreadable_while_training_is_one_line_and_leaves_no_run(project, tmp_path):
    # The example's synthetic tree in the ImageNet layout, whose frame check is cached: a frame
    # rewritten in place afterwards (its folder's time unchanged) is found by training.
    root = tmp_path / "synthetic"
    shutil.copytree(project / "synthetic", root)
    datasets = tmp_path / "datasets.yaml"
    classes = list(SYNTHETIC_CLASSES)
    datasets.write_text(
        json.dumps(
            {
                "vid_train": dict(
                    kind="imagenet_vid",
                    root=str(root),
                    image_set="ImageSets/VID_train_15frames.txt",
                    class_names=classes,
                    cache_dir=str(tmp_path / "cache"),
                ),
                "vid_val": dict(
                    kind="imagenet_vid",
                    root=str(root),
                    image_set="ImageSets/VID_val_videos.txt",
                    class_names=classes,
                ),
            }
        )
    )
    load_imagenet_vid(
        str(root),
        "ImageSets/VID_train_15frames.txt",
        class_names=classes,
        cache_dir=str(tmp_path / "cache"),
    )
    frames = sorted((root / "Data" / "VID" / "train").glob("*/*/*.JPEG"))
    for frame in frames:
        with open(frame, "r+b") as f:
            f.write(b"\0" * 64)
    output = tmp_path / "output"
    run = run_readme_command(
        project,
        f"python train_net.py --config-file configs/synthetic/single_frame.yaml {TINY} "
        f"DATASETS.FILE {datasets} DATASETS.TRAIN '(\"vid_train\",)' "
        f"DATASETS.TEST '(\"vid_val\",)' OUTPUT_DIR {output} DATALOADER.NUM_WORKERS 2",
    )
    line = _one_line_error(run)
    assert line.startswith(f"train_net.py: error: Cannot read the frame {root}/Data/VID/train/")
    assert line.endswith(".JPEG: not an image PIL knows")
    # Neither metrics nor TensorBoard events of a run that saved nothing to resume from.
    assert sorted(os.listdir(output)) == ["config.yaml", "log.txt"]


def test_config_mistakes_are_one_line(project, train_net, tmp_path, monkeypatch):
    run = run_readme_command(project, "python train_net.py")
    assert _one_line_error(run) == (
        "train_net.py: error: no config file: give one with --config-file, e.g. `python "
        "train_net.py --config-file configs/synthetic/single_frame.yaml` (--help lists the "
        "options)"
    )
    run = run_readme_command(project, f"{README_COMMAND} MODEL.ROI_HEADS.NUM_CLASES 3")
    assert _one_line_error(run).startswith(
        "train_net.py: error: MODEL.ROI_HEADS.NUM_CLASES is not a config key (did you mean "
        "'MODEL.ROI_HEADS.NUM_CLASSES'"
    )
    # Pretrained weights at a URL that cannot be fetched (nothing listens on port 9).
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as raised:
        train_net.check(_args("MODEL.WEIGHTS", "http://127.0.0.1:9/R-50.pkl"))
    assert str(raised.value).endswith(
        "download it where there is network and give its local path, "
        "MODEL.WEIGHTS /path/to/R-50.pkl"
    )


def test_eval_only_refuses_weights_for_another_class_count(project, train_net):
    cfg = train_net.build_config(_args("MODEL.ROI_HEADS.NUM_CLASSES", "5"))
    torch.save({"model": build_model(cfg).state_dict()}, "five_classes.pth")
    with pytest.raises(ValueError) as raised:
        train_net.check(_args("MODEL.WEIGHTS", "five_classes.pth", eval_only=True))
    assert str(raised.value).startswith(
        "MODEL.WEIGHTS five_classes.pth was trained for 5 classes but "
        "MODEL.ROI_HEADS.NUM_CLASSES is 3, so its class and box predictors"
    )
