import logging
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from vod_d2 import add_vod_config
from vod_d2.data.synthetic import ensure_synthetic_dataset
from vod_d2.modeling.temporal import TEMPORAL_AGGREGATION_REGISTRY, TemporalAggregation

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_CONFIG = "configs/synthetic/single_frame.yaml"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """
    The tiny test models are up to ~100x slower with two intra-op threads than with one when
    the cores are busy (thread hand-offs dominate a few-ms forward); results are the same.
    """
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(autouse=True, scope="session")
def _run_from_repo_root():
    """Tests name configs relative to the repository, as the README's commands do."""
    os.chdir(REPO_ROOT)


@pytest.fixture(autouse=True)
def _keep_log_propagation():
    """
    Command-line entry points run in-process call detectron2's ``setup_logger``, which stops
    the ``vod_d2``/``detectron2`` loggers from propagating; later tests reading records through
    ``caplog`` would then see none.
    """
    loggers = [logging.getLogger(name) for name in ("vod_d2", "detectron2")]
    propagate = [logger.propagate for logger in loggers]
    yield
    for logger, value in zip(loggers, propagate):
        logger.propagate = value


if "WindowMeanAggregation" not in TEMPORAL_AGGREGATION_REGISTRY:

    @TEMPORAL_AGGREGATION_REGISTRY.register()
    class WindowMeanAggregation(TemporalAggregation):
        """Test module: mean of the reference and support maps (depends on the whole window)."""

        def __init__(self, cfg, input_shape):
            super().__init__(input_shape)
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, ref, support, offsets, frames):
            stacked = torch.cat([ref["feature"][:, None], support["feature"]], dim=1)
            return self.scale * stacked.mean(dim=1)

    @TEMPORAL_AGGREGATION_REGISTRY.register()
    class RunningMeanAggregation(TemporalAggregation):
        """
        Test module with recurrent state: the mean of every frame's map so far in the video
        (an online memory, updated in encode as each frame arrives).
        """

        support_keys = ()

        def __init__(self, cfg, input_shape):
            super().__init__(input_shape)
            self.reset()

        def reset(self):
            self.total, self.count = 0, 0

        def encode(self, feature, frames):
            self.total = self.total + feature.sum(dim=0, keepdim=True)
            self.count += feature.shape[0]
            return {"feature": self.total / self.count}

        def forward(self, ref, support, offsets, frames):
            return ref["feature"]


@pytest.fixture
def tiny_cfg():
    """The synthetic config at its smallest: 64 px frames, few proposals."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / SYNTHETIC_CONFIG))
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 20
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.fixture(scope="session")
def synthetic_datasets(tmp_path_factory):
    """
    The built-in synthetic dataset names, backed by a small tree (2+2 videos of 64x80 frames)
    generated once per test session in a temporary ``$DETECTRON2_DATASETS``.
    """
    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_dataset(
        str(root / "vod_d2_synthetic"),
        num_train_videos=2,
        num_val_videos=2,
        num_det_images=3,
        num_frames=(16, 18),
        size=(64, 80),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(root))
        yield root
