"""Every config in configs/ loads with the vod_d2 keys and builds its model."""

import glob
import os

import pytest
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


def test_unknown_keys_fail_loudly(tmp_path):
    bad = tmp_path / "bad.yaml"
    base = os.path.abspath("configs/synthetic/single_frame.yaml")
    bad.write_text(f'_BASE_: "{base}"\nMODEL:\n  VIDEO:\n    TEST_WINDOWS: (1, 1)\n')
    with pytest.raises(KeyError, match="MODEL.VIDEO.TEST_WINDOWS"):
        _load(str(bad))
