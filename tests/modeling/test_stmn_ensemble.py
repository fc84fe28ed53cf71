"""STMN's test-time ensemble with its static detector (§4): merging, the model, the config."""

import pytest
import torch
from _testing import random_video
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from vod_d2 import add_vod_config
from vod_d2.engine import run_on_video
from vod_d2.modeling.meta_arch.ensemble import StaticEnsembleRCNN, merge_detections


def _detections(boxes, scores, classes, size=(100, 100)):
    instances = Instances(size)
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    instances.scores = torch.tensor(scores)
    instances.pred_classes = torch.tensor(classes)
    return instances


def test_merging_two_detectors_on_a_hand_made_case():
    stmn = _detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.5], [0, 1])
    static = _detections(
        [[1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.7, 0.6], [0, 1, 0]
    )
    merged = merge_detections([stmn, static], nms_thresh=0.3, max_detections=3)
    # Static's first box overlaps STMN's first, same class, IoU 81 / 100 > 0.3: suppressed.
    # Its second is the same box but another class: kept. Best 3 by score: 0.9, 0.7, 0.6
    # (STMN's class-1 box at 0.5 is the fourth).
    assert merged.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert merged.pred_classes.tolist() == [0, 1, 0]
    assert merged.pred_boxes.tensor.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    # Without a limit the fourth stays; a looser threshold keeps the overlapping pair.
    assert len(merge_detections([stmn, static], 0.3, -1)) == 4
    assert len(merge_detections([stmn, static], 0.9, -1)) == 5
    empty = _detections([], [], [])
    assert len(merge_detections([empty, empty], 0.3, 10)) == 0


def _cfg(tiny_cfg, tmp_path):
    """A tiny STMN ensemble config, its static detector's config file and checkpoint."""
    static_cfg = tiny_cfg.clone()
    # No limit per frame: merging the raw detections (the ensemble) and merging each detector's
    # post-processed ones (the test) then keep the same boxes, since post-processing only drops
    # empty boxes, which NMS neither drops nor lets suppress another.
    static_cfg.TEST.DETECTIONS_PER_IMAGE = -1
    static_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    static_yaml = tmp_path / "static.yaml"
    static_yaml.write_text(static_cfg.dump())
    torch.manual_seed(1)
    static = build_model(static_cfg).eval()
    torch.save({"model": static.state_dict()}, tmp_path / "static.pth")

    cfg = static_cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "StaticEnsembleRCNN"
    cfg.MODEL.VIDEO.AGGREGATION = "STMNAggregation"
    cfg.MODEL.VIDEO.TEST_WINDOW = (2, 2)
    cfg.MODEL.STMN.MEMORY_CHANNELS = 8
    cfg.INPUT.VIDEO.TRAIN_SAMPLING = "fixed"
    cfg.INPUT.VIDEO.TRAIN_OFFSETS = (-1, 1)
    cfg.MODEL.STMN.ENSEMBLE.STATIC_CONFIG = str(static_yaml)
    cfg.MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS = str(tmp_path / "static.pth")
    return cfg, static


def test_ensemble_detections_merge_both_detectors(tiny_cfg, tmp_path):
    cfg, static = _cfg(tiny_cfg, tmp_path)
    torch.manual_seed(0)
    ensemble = build_model(cfg).eval()
    assert isinstance(ensemble, StaticEnsembleRCNN)
    video_cfg = cfg.clone()
    video_cfg.MODEL.META_ARCHITECTURE = "VideoRCNN"
    stmn = build_model(video_cfg).eval()
    # MODEL.WEIGHTS of the ensemble is the STMN checkpoint: it has no static_detector.* keys,
    # which keep their tensors and are not reported missing.
    before = {k: v.clone() for k, v in ensemble.static_detector.state_dict().items()}
    assert ensemble.load_state_dict(stmn.state_dict()).missing_keys == []
    for key, value in ensemble.static_detector.state_dict().items():
        assert torch.equal(value, before[key]), key

    video = random_video(7, seed=3)
    merged = [out["instances"] for _, out in run_on_video(ensemble, video)]
    # The static detector's weights came from STATIC_WEIGHTS, when the first video started.
    for key, value in static.state_dict().items():
        assert torch.equal(ensemble.static_detector.state_dict()[key], value), key
    own = [out["instances"] for _, out in run_on_video(stmn, video)]
    alone = [out["instances"] for _, out in run_on_video(static, video)]
    limit = cfg.TEST.DETECTIONS_PER_IMAGE
    for t, (m, a, b) in enumerate(zip(merged, own, alone)):
        expected = merge_detections([a, b], cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, limit)
        assert len(a) and len(b), t
        torch.testing.assert_close(m.pred_boxes.tensor, expected.pred_boxes.tensor)
        torch.testing.assert_close(m.scores, expected.scores)
        assert torch.equal(m.pred_classes, expected.pred_classes)
    # The static detector adds detections (so the checks above can fail).
    assert all(len(m) > len(a) for m, a in zip(merged, own))


def test_ensemble_errors_name_the_culprit(tiny_cfg, tmp_path):
    cfg, _ = _cfg(tiny_cfg, tmp_path)
    missing = cfg.clone()
    missing.MODEL.STMN.ENSEMBLE.STATIC_CONFIG = ""
    with pytest.raises(ValueError, match="MODEL.STMN.ENSEMBLE.STATIC_CONFIG"):
        build_model(missing)
    absent = cfg.clone()
    absent.MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS = str(tmp_path / "absent.pth")
    model = build_model(absent).eval()  # builds: the weights are read at the first video
    with pytest.raises(FileNotFoundError, match="STATIC_WEIGHTS"):
        model(random_video(2))
    with pytest.raises(RuntimeError, match="test-time"):
        build_model(cfg).train()(random_video(2))
    # The static detector must be frame-independent: an STMN is not.
    video_yaml = tmp_path / "video.yaml"
    video_cfg = cfg.clone()
    video_cfg.MODEL.META_ARCHITECTURE = "VideoRCNN"
    video_yaml.write_text(video_cfg.dump())
    not_static = cfg.clone()
    not_static.MODEL.STMN.ENSEMBLE.STATIC_CONFIG = str(video_yaml)
    with pytest.raises(ValueError, match="frame-independent"):
        build_model(not_static)


def test_the_paper_row_config_has_the_papers_test_protocol():
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/stmn_R101_RFCN_ensemble.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "StaticEnsembleRCNN"
    assert cfg.TEST.SEQ_NMS.ENABLED and cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.3
    assert cfg.MODEL.STMN.ENSEMBLE.STATIC_CONFIG == "configs/stmn_R101_RFCN_static.yaml"
    assert cfg.MODEL.STMN.PER_FRAME_LOSS and cfg.MODEL.STMN.MATCHTRANS.NORMALIZATION == "cosine"
    plain = get_cfg()
    add_vod_config(plain)
    plain.merge_from_file("configs/stmn_R101_RFCN.yaml")
    assert plain.MODEL.META_ARCHITECTURE == "VideoRCNN" and not plain.TEST.SEQ_NMS.ENABLED
    assert plain.DATASETS.TRAIN == ("imagenet_vid_train_15frames",)
    static = get_cfg()
    add_vod_config(static)
    static.merge_from_file(cfg.MODEL.STMN.ENSEMBLE.STATIC_CONFIG)
    assert static.DATASETS.TRAIN == ("imagenet_det_train_30classes",)
    # The static detector's feature reduction is what the STMN cells start from.
    assert static.MODEL.RFCN.REDUCTION_CHANNELS == 2 * plain.MODEL.STMN.MEMORY_CHANNELS
    assert static.MODEL.RFCN.REDUCTION_DILATION == plain.MODEL.STMN.DILATION
