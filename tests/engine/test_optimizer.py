import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from vod_d2 import add_vod_config
from vod_d2.engine.optimizer import build_optimizer


def _cfg(clip_type=None):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 2.5e-5
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 1e-4
    if clip_type:
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    return cfg


class _TwoParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(1))
        self.b = nn.Parameter(torch.zeros(1))
        self.frozen = nn.Parameter(torch.zeros(1), requires_grad=False)


def _clipped_gradients(clip_type):
    # Gradients 3 and 4: norm 5 over the model, 3 and 4 per parameter.
    model = _TwoParameters()
    optimizer = build_optimizer(_cfg(clip_type), model)
    (3 * model.a + 4 * model.b).sum().backward()
    optimizer.step()
    return model.a.grad.item(), model.b.grad.item()


def test_adamw_with_the_papers_settings():
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    optimizer = build_optimizer(_cfg(), model)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == 4
    for g in groups:
        assert g["lr"] == 2.5e-5 and g["weight_decay"] == 1e-4


def test_full_model_clipping_scales_all_gradients_together():
    assert _clipped_gradients("full_model") == pytest.approx((0.6, 0.8))
    assert _clipped_gradients("norm") == pytest.approx((1.0, 1.0))
    assert _clipped_gradients(None) == pytest.approx((3.0, 4.0))


def test_frozen_parameters_are_left_out():
    optimizer = build_optimizer(_cfg("full_model"), _TwoParameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2
