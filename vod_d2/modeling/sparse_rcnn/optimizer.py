"""The optimizer of Sparse R-CNN's schedule: AdamW with full-model gradient clipping."""

import torch
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)

__all__ = ["build_sparse_rcnn_optimizer"]

_FULL_MODEL = "full_model"


def build_sparse_rcnn_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    AdamW over the model's trainable parameters (Sparse R-CNN §4, SparseVOD §4.1: lr 2.5e-5,
    weight decay 1e-4), with detectron2's per-parameter learning-rate and weight-decay rules
    (``SOLVER.BASE_LR``, ``WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM``, ``BIAS_LR_FACTOR``,
    ``WEIGHT_DECAY_BIAS``). The step is clipped as ``SOLVER.CLIP_GRADIENTS`` says, with one more
    ``CLIP_TYPE``: ``"full_model"`` clips the norm of all gradients together (Sparse R-CNN and
    DETR: norm 1.0), where detectron2's ``"norm"`` clips each parameter's gradient alone.

    A trainer selects it with ``SOLVER.OPTIMIZER: "ADAMW"``.

    Args:
        cfg: the config.
        model: the model to train.

    Returns:
        torch.optim.Optimizer: AdamW, or a subclass of it that clips gradients in ``step``.
    """
    solver = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == _FULL_MODEL:

        def clip_all(parameters):
            torch.nn.utils.clip_grad_norm_(parameters, clip.CLIP_VALUE, clip.NORM_TYPE)

        optimizer_type = _generate_optimizer_class_with_gradient_clipping(
            torch.optim.AdamW, global_clipper=clip_all
        )
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_type(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
