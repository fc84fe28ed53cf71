import logging
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from vod_d2 import add_vod_config
from vod_d2.engine import VideoTrainer


def _cfg(tmp_path, max_iter):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/single_frame.yaml")
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER", max_iter,
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.WARMUP_ITERS", 1,
            "DATALOADER.NUM_WORKERS", 0,
            "OUTPUT_DIR", str(tmp_path),
            "SEED", 7,
        ]
    )  # fmt: skip
    return cfg


def _train(cfg):
    """Train as train_net.py does (without the final evaluation)."""
    cfg = cfg.clone()
    cfg.DATASETS.TEST = ()
    seed_all_rng(cfg.SEED)
    trainer = VideoTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


@pytest.mark.usefixtures("synthetic_datasets")
def test_few_iterations_then_evaluation_on_cpu(tmp_path):
    cfg = _cfg(tmp_path, max_iter=3)
    trainer = _train(cfg)
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 3 and all(math.isfinite(v) for v, _ in losses)
    results = VideoTrainer.test(cfg, trainer.model)["synthetic_vid_val"]["bbox"]
    for key in ("mAP", "mAP_slow", "mAP_medium", "mAP_fast", "AP", "AP50", "AP75"):
        assert key in results
    assert 0.0 <= results["mAP"] <= 100.0
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.usefixtures("synthetic_datasets")
def test_same_seed_gives_the_same_losses(tmp_path):
    runs = [_train(_cfg(tmp_path / str(i), max_iter=3)) for i in range(2)]
    first, second = [[v for v, _ in r.storage.history("total_loss").values()] for r in runs]
    assert first == second
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("synthetic_datasets")
def test_a_wrong_class_count_or_dataset_fails_before_training(tmp_path):
    cfg = _cfg(tmp_path, max_iter=3)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    with pytest.raises(
        ValueError, match="NUM_CLASSES is 4 but dataset 'synthetic_vid_train' has 5"
    ):
        VideoTrainer(cfg)
    cfg = _cfg(tmp_path, max_iter=3)
    cfg.DATASETS.TEST = ("synthetic_vid_vall",)
    with pytest.raises(ValueError, match="'synthetic_vid_vall', which is not a registered"):
        VideoTrainer(cfg)
    assert not (tmp_path / "model_final.pth").exists()


@pytest.mark.usefixtures("synthetic_datasets")
def test_fine_tuning_from_weights_for_another_class_count(tmp_path, caplog):
    source = _cfg(tmp_path, max_iter=3)
    source.MODEL.ROI_HEADS.NUM_CLASSES = 3
    weights = tmp_path / "three_classes.pth"
    torch.save({"model": build_model(source).state_dict()}, weights)
    cfg = _cfg(tmp_path / "run", max_iter=3)
    cfg.MODEL.WEIGHTS = str(weights)
    trainer = VideoTrainer(cfg)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer.resume_or_load(resume=False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"MODEL.WEIGHTS {weights} was trained for 3 classes but MODEL.ROI_HEADS.NUM_CLASSES is "
        "5: fine-tuning, these layers start fresh: roi_heads.box_predictor.cls_score, "
        "roi_heads.box_predictor.bbox_pred"
    ]
    assert trainer.model.roi_heads.box_predictor.cls_score.out_features == 6


@pytest.mark.usefixtures("synthetic_datasets")
def test_metrics_hold_the_gates_opening_and_the_sampling_locations_by_iteration(tmp_path):
    """ModuleRecordsWriter: the scheduled gates of LSTS open on schedule in metrics.json, and
    its sampling locations' spread is recorded beside them."""
    import json

    from _testing import synthetic_cfg

    cfg = synthetic_cfg(
        "lsts",
        **{
            "MODEL.VIDEO.GATE.KIND": "scheduled", "MODEL.VIDEO.GATE.OPEN_ITERS": 30,
            "SOLVER.MAX_ITER": 20, "SOLVER.IMS_PER_BATCH": 2, "SOLVER.WARMUP_ITERS": 1,
            "OUTPUT_DIR": str(tmp_path),
        },
    )  # fmt: skip
    _train(cfg)
    with open(tmp_path / "metrics.json") as f:
        entries = [json.loads(line) for line in f]
    last = entries[-1]
    assert last["iteration"] == 19
    # The last training forward ran at iteration 19: g = 19 / 30.
    for unit in ("srfu", "dfa"):
        assert last[f"gate/key_frames.fusion.{unit}.residual_gate"] == pytest.approx(19 / 30)
    spread = last["locations_rms/key_frames.fusion.sampling"]
    assert 0.5 < spread < 3.0  # Gaussian unit-variance init: about sqrt(2)
