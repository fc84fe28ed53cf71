"""
vod_d2.checkpoint: weights trained for another class count are refused for inference and
fine-tune in training; weights that cannot be found or fetched are named in one line.
"""

import logging
import os
import urllib.error
import urllib.request

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vod_d2 import add_vod_config
from vod_d2.checkpoint import (
    VideoCheckpointer,
    check_inference_weights,
    check_predictor_classes,
    predictor_mismatch,
    resolve_weights,
)

SINGLE_FRAME = "configs/synthetic/single_frame.yaml"
# Every head vod_d2 ships: Fast R-CNN, R-FCN, deformable R-FCN (class offsets), Sparse R-CNN.
HEADS = [
    (SINGLE_FRAME, {}),
    ("configs/synthetic/rfcn.yaml", {}),
    ("configs/synthetic/rfcn.yaml", {"MODEL.RFCN.DEFORMABLE": "True"}),
    ("configs/synthetic/sparse_rcnn.yaml", {}),
]


def _cfg(path, num_classes):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def _shapes(path, num_classes, **options):
    cfg = _cfg(path, num_classes)
    cfg.merge_from_list([item for pair in options.items() for item in pair])
    return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


@pytest.mark.parametrize("path, options", HEADS)
def test_every_class_dependent_tensor_is_a_predictor_that_tells_the_class_count(path, options):
    model = _shapes(path, 5, **options)
    trained = _shapes(path, 7, **options)
    differ = {k for k in model if model[k] != trained[k]}
    assert differ  # the class predictors
    shared = [(k, trained[k], model[k]) for k in model]
    checkpoint_classes, names = predictor_mismatch(shared, num_classes=5)
    assert (checkpoint_classes, set(names)) == (7, differ)
    assert predictor_mismatch([(k, model[k], model[k]) for k in model], 5) == (None, [])
    if options:
        assert "roi_heads.box_predictor.cls_offsets.conv.weight" in differ


def test_class_agnostic_boxes_against_class_specific_ones_are_named():
    specific = _shapes(SINGLE_FRAME, 5)
    agnostic = _shapes(SINGLE_FRAME, 5, **{"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": "True"})
    shared = [(k, agnostic[k], specific[k]) for k in specific]
    assert predictor_mismatch(shared, 5) == (
        None,
        ["roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"],
    )
    with pytest.raises(ValueError, match="set MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG as it was"):
        check_predictor_classes(_cfg(SINGLE_FRAME, 5), shared, "x.pth", fine_tune=False)


@pytest.fixture(scope="module")
def three_class_weights(tmp_path_factory):
    """A checkpoint of the single-frame model trained for 3 classes, and its state."""
    torch.manual_seed(0)
    state = build_model(_cfg(SINGLE_FRAME, 3)).state_dict()
    path = tmp_path_factory.mktemp("weights") / "model_final.pth"
    torch.save({"model": state, "iteration": 9}, path)
    return str(path), state


def test_weights_for_another_class_count_are_refused_for_inference(three_class_weights):
    path, _ = three_class_weights
    message = (
        f"MODEL.WEIGHTS {path} was trained for 3 classes but MODEL.ROI_HEADS.NUM_CLASSES is 5, "
        "so its class and box predictors (roi_heads.box_predictor.cls_score, "
        "roi_heads.box_predictor.bbox_pred) do not fit: set MODEL.ROI_HEADS.NUM_CLASSES 3"
    )
    cfg = _cfg(SINGLE_FRAME, 5)
    cfg.MODEL.WEIGHTS = path
    with pytest.raises(ValueError) as raised:
        check_inference_weights(cfg)
    assert str(raised.value) == message
    with pytest.raises(ValueError) as raised:
        VideoCheckpointer(build_model(cfg), cfg=cfg).load(path)
    assert str(raised.value) == message
    # With the right class count, both load.
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    check_inference_weights(cfg)
    VideoCheckpointer(build_model(cfg), cfg=cfg).load(path)


def test_fine_tuning_to_another_class_count_starts_the_predictors_fresh(
    three_class_weights, caplog
):
    path, trained = three_class_weights
    cfg = _cfg(SINGLE_FRAME, 5)
    torch.manual_seed(1)
    model = build_model(cfg)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        VideoCheckpointer(model, cfg=cfg, fine_tune=True).load(path)
    for key, value in model.state_dict().items():
        expected = initial[key] if key.startswith("roi_heads.box_predictor.") else trained[key]
        assert torch.equal(value, expected), key
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"MODEL.WEIGHTS {path} was trained for 3 classes but MODEL.ROI_HEADS.NUM_CLASSES is 5: "
        "fine-tuning, these layers start fresh: roi_heads.box_predictor.cls_score, "
        "roi_heads.box_predictor.bbox_pred"
    ]


def test_inference_weights_that_are_no_checkpoint_are_one_line(tmp_path):
    cfg = _cfg(SINGLE_FRAME, 5)
    cfg.MODEL.WEIGHTS = str(tmp_path / "notes.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes.pth is not a checkpoint \(loading it raises"):
        check_inference_weights(cfg)


def test_weights_that_cannot_be_found_or_fetched_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="^MODEL.WEIGHTS nowhere.pth does not exist$"):
        resolve_weights("nowhere.pth")
    # Nothing listens on port 9 of this machine: a URL that cannot be fetched, fast.
    url = "http://127.0.0.1:9/ImageNetPretrained/R-101.pkl"
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as raised:
        resolve_weights(url)
    assert str(raised.value).startswith(f"MODEL.WEIGHTS {url} could not be fetched from {url} (")
    assert str(raised.value).endswith(
        "download it where there is network and give its local path, "
        "MODEL.WEIGHTS /path/to/R-101.pkl"
    )

    # detectron2:// names the URL it stands for.
    def offline(url, timeout):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as raised:
        resolve_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert str(raised.value).startswith(
        "MODEL.WEIGHTS detectron2://ImageNetPretrained/MSRA/R-50.pkl could not be fetched from "
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl (no network "
        "for https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl)"
    )
    # A copy downloaded before is used without the network.
    cached = tmp_path / "ImageNetPretrained" / "R-101.pkl"
    os.makedirs(cached.parent)
    cached.write_bytes(b"weights")
    assert resolve_weights(url) == str(cached)
