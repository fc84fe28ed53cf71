"""Every config in configs/ loads with the vod_d2 keys and builds its model."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vod_d2 import add_vod_config

CONFIGS = sorted(glob.glob("configs/**/*.yaml", recursive=True))


def _load(path):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_are_found():
    assert "configs/synthetic/single_frame.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_its_model(path):
    cfg = _load(path)
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    if "synthetic" in path and not path.endswith("Base-synthetic.yaml"):
        assert cfg.DATASETS.TEST and all(n.startswith("synthetic") for n in cfg.DATASETS.TEST)


def _deformable(path):
    cfg = _load(path)
    return any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) or cfg.MODEL.RFCN.DEFORM_RES4_LAST_BLOCKS


DEFORMABLE = [path for path in CONFIGS if _deformable(path)]


def test_the_paper_configs_with_deformable_convs_are_found():
    assert {"configs/stsn_R101_RFCN_deform.yaml", "configs/lsts_R101_dcn.yaml"} <= set(DEFORMABLE)


@pytest.mark.parametrize("path", DEFORMABLE)
def test_deformable_backbones_run_on_the_cpu(path):
    # detectron2's deformable convs raise NotImplementedError on the CPU; vod_d2's backbones
    # compute them with torchvision.
    backbone = build_model(_load(path)).backbone
    torch.manual_seed(0)
    features = backbone(torch.randn(1, 3, 64, 96))
    sum(f.sum() for f in features.values()).backward()
    offsets = [m for name, m in backbone.named_modules() if name.endswith("conv2_offset")]
    assert offsets and all(m.weight.grad is not None for m in offsets)


def test_unknown_keys_fail_loudly(tmp_path):
    bad = tmp_path / "bad.yaml"
    base = os.path.abspath("configs/synthetic/single_frame.yaml")
    bad.write_text(f'_BASE_: "{base}"\nMODEL:\n  VIDEO:\n    TEST_WINDOWS: (1, 1)\n')
    with pytest.raises(KeyError, match="MODEL.VIDEO.TEST_WINDOWS"):
        _load(str(bad))
