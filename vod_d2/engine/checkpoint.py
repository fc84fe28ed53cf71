"""
Loading a single-frame checkpoint as a video method's start (the two-stage recipe).

Video methods are fine-tuned from a single-frame detector of their head, as every paper does
and as users with their own data should: temporal models trained from scratch on small data
fail to learn. ``MODEL.WEIGHTS`` may therefore name a single-frame checkpoint of the same head
for any video method. :class:`VideoCheckpointer` loads it as that method's start: through the
STMN weight transfer (:mod:`vod_d2.modeling.temporal.weight_transfer`) where the model has STMN
cells the checkpoint lacks, directly otherwise (the temporal modules' parameters, absent from
the checkpoint, keep their initialisation, which ``MODEL.VIDEO.IDENTITY_INIT`` makes the
single-frame detector's), and logs one line saying what was loaded and what starts fresh.

:func:`new_parameter_names` tells the optimizer which parameters start fresh, so that they
train at ``SOLVER.NEW_MODULE_LR_FACTOR`` times the learning rate of the pretrained ones.
"""

import logging
from typing import Dict, List, Set, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..modeling.temporal.weight_transfer import transfer_single_frame_weights

__all__ = ["VideoCheckpointer", "new_parameter_names", "start_state"]

logger = logging.getLogger(__name__)

# A state-dict key of an STMN cell, which a single-frame checkpoint converts into.
_STMN_CELL = ".cell.input_conv.weight"


def start_state(
    model: nn.Module, state: Dict[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """
    The state to load into ``model`` from a checkpoint's ``state``, and what it leaves fresh.

    Args:
        model: the model to start.
        state: the checkpoint's state dict (names as the model's, tensors).

    Returns:
        tuple: the state dict to load; the names of the model's parameters it does not provide
        (they keep their initialisation), sorted; and how it was made: ``"transfer"`` (a
        single-frame checkpoint through the STMN weight transfer) or ``"direct"``.
    """
    target = model.state_dict()
    needs_transfer = any(k.endswith(_STMN_CELL) for k in target) and not any(
        k.endswith(_STMN_CELL) for k in state
    )
    if needs_transfer and any(k.startswith("backbone.") for k in state):
        converted, report = transfer_single_frame_weights(state, target)
        kept = set(report.kept_init)
        fresh = sorted(name for name, _ in model.named_parameters() if name in kept)
        return converted, fresh, "transfer"
    fresh = sorted(name for name, _ in model.named_parameters() if name not in state)
    return state, fresh, "direct"


def new_parameter_names(model: nn.Module, state: Dict[str, torch.Tensor]) -> Set[str]:
    """
    The parameters of ``model`` that start fresh when ``state`` is loaded into it: those the
    checkpoint does not provide, except the ones a module loaded from its own pretrained
    weights (a flow network's ``MODEL.FLOW.WEIGHTS``: its ``loaded_weights`` is set). Empty when
    the checkpoint provides none of the model's parameters by name (ImageNet backbone weights,
    which detectron2 maps by heuristics, or no checkpoint): then nothing is a new module.
    """
    _, fresh, _ = start_state(model, state)
    if len(fresh) == sum(1 for _ in model.parameters()):
        return set()
    pretrained = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if getattr(module, "loaded_weights", "")
        for name, _ in module.named_parameters()
    }
    return set(fresh) - pretrained


class VideoCheckpointer(DetectionCheckpointer):
    """
    detectron2's checkpointer, which also starts a video model from a single-frame checkpoint
    of its head (see the module docstring). Checkpoints of the model itself (resuming,
    evaluating) load exactly as with :class:`DetectionCheckpointer`.
    """

    def _load_model(self, checkpoint):
        self._convert_ndarray_to_tensor(checkpoint["model"])
        if checkpoint.get("matching_heuristics", False):
            return super()._load_model(checkpoint)
        state, fresh, how = start_state(self.model, checkpoint["model"])
        checkpoint["model"] = state
        incompatible = super()._load_model(checkpoint)
        if fresh:
            total = sum(1 for _ in self.model.parameters())
            modules = sorted({".".join(name.split(".")[:2]) for name in fresh})
            via = " through the STMN weight transfer" if how == "transfer" else ""
            logger.info(
                f"{type(self.model).__name__} starts from this checkpoint{via}: "
                f"{total - len(fresh)} of its {total} parameter tensors loaded, {len(fresh)} "
                f"start at their initialisation ({', '.join(modules)})"
            )
        return incompatible
