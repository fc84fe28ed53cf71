"""The optimizer of every vod_d2 model: SGD (detectron2's) or AdamW (Sparse R-CNN's schedule)."""

import logging
from typing import Dict, Set

import torch
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from detectron2.utils.file_io import PathManager

from ..checkpoint import load_model_state, new_parameter_names

__all__ = ["OPTIMIZERS", "build_optimizer", "optimizer_overrides"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("SGD", "ADAMW")
_FULL_MODEL = "full_model"


def optimizer_overrides(model: torch.nn.Module) -> Dict[str, Dict[str, float]]:
    """
    The parameter groups the model's modules ask for: every module with an
    ``optimizer_overrides()`` method returns ``{parameter name: {"lr": ..., "weight_decay":
    ...}}``, as detectron2's ``get_default_optimizer_params(overrides=...)`` takes them (e.g.
    LSTS's sampling locations).
    """
    overrides = {}
    for module in model.modules():
        if callable(getattr(module, "optimizer_overrides", None)):
            overrides.update(module.optimizer_overrides())
    return overrides


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    ``SOLVER.OPTIMIZER`` over the model's trainable parameters, with detectron2's per-parameter
    rules (``SOLVER.BASE_LR``, ``WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM``, ``BIAS_LR_FACTOR``,
    ``WEIGHT_DECAY_BIAS``) and the model's :func:`optimizer_overrides`:

    * ``"SGD"``: detectron2's SGD with ``MOMENTUM`` and ``NESTEROV``;
    * ``"ADAMW"``: AdamW (Sparse R-CNN §4, SparseVOD §4.1: lr 2.5e-5, weight decay 1e-4).

    The parameters that ``MODEL.WEIGHTS`` does not provide (the modules a video method adds to
    the single-frame detector it starts from, :func:`vod_d2.checkpoint.new_parameter_names`) train
    at ``SOLVER.NEW_MODULE_LR_FACTOR`` times the learning rate.

    The step is clipped as ``SOLVER.CLIP_GRADIENTS`` says, with one more ``CLIP_TYPE``:
    ``"full_model"`` clips the norm of all gradients together (Sparse R-CNN and DETR: norm 1.0),
    where detectron2's ``"norm"`` clips each parameter's gradient alone.
    """
    solver = cfg.SOLVER
    if solver.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {solver.OPTIMIZER!r}")
    if solver.NEW_MODULE_LR_FACTOR <= 0:
        raise ValueError(
            f"SOLVER.NEW_MODULE_LR_FACTOR must be > 0, got {solver.NEW_MODULE_LR_FACTOR}"
        )
    new = _new_parameters(cfg, model) if solver.NEW_MODULE_LR_FACTOR != 1.0 else set()
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        overrides=optimizer_overrides(model) or None,
        lr_factor_func=lambda name: solver.NEW_MODULE_LR_FACTOR if name in new else 1.0,
    )
    if solver.OPTIMIZER == "SGD":
        optimizer_type = torch.optim.SGD
        kwargs = dict(momentum=solver.MOMENTUM, nesterov=solver.NESTEROV)
    else:
        optimizer_type, kwargs = torch.optim.AdamW, {}
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == _FULL_MODEL:

        def clip_all(parameters):
            torch.nn.utils.clip_grad_norm_(parameters, clip.CLIP_VALUE, clip.NORM_TYPE)

        optimizer_type = _generate_optimizer_class_with_gradient_clipping(
            optimizer_type, global_clipper=clip_all
        )
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kwargs)


def _new_parameters(cfg, model: torch.nn.Module) -> Set[str]:
    """The names of the parameters ``cfg.MODEL.WEIGHTS`` does not provide (see the caller)."""
    # ImageNet weights (.pkl) name no detector parameter: nothing is a new module then.
    if not cfg.MODEL.WEIGHTS or cfg.MODEL.WEIGHTS.endswith(".pkl"):
        return set()
    state = load_model_state(PathManager.get_local_path(cfg.MODEL.WEIGHTS))
    new = new_parameter_names(model, state)
    if new:
        modules = sorted({".".join(name.split(".")[:2]) for name in new})
        logger.info(
            f"{len(new)} parameter tensors that {cfg.MODEL.WEIGHTS} does not hold train at "
            f"SOLVER.NEW_MODULE_LR_FACTOR = {cfg.SOLVER.NEW_MODULE_LR_FACTOR} times the learning "
            f"rate: {', '.join(modules)}"
        )
    return new
