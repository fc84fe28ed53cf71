"""
Start STMN from a single-frame checkpoint (the weight transfer of §3.2): done on load when
``MODEL.WEIGHTS`` names the single-frame checkpoint (:class:`vod_d2.checkpoint.VideoCheckpointer`),
or written once as an STMN checkpoint::

    python tools/weight_transfer.py --config-file configs/stmn_R101_RFCN.yaml \\
        --input output/stmn_R101_RFCN_static/model_final.pth --output stmn_init.pth
    python train_net.py --config-file configs/stmn_R101_RFCN.yaml MODEL.WEIGHTS stmn_init.pth

The paper initialises ``W_z``, ``W_r`` and ``W`` (Eq. 1-3) with the weights of the convolution
the STMM replaces, "the last convolution layer before the Position-Sensitive ROI pooling" of
R-FCN, and keeps every other pretrained layer. The convolution becomes the cells' ``W_z``,
``W_r`` and ``W`` (each of the three output blocks of
``temporal_aggregation.*_memory.cell.input_conv``; ``U_z, U_r, U`` keep their fresh
initialisation), in one of two ways, chosen by its width against the memories' M:

* **split** (2 M output channels, the authors' ``conv_to_STMM``): the forward cell takes its
  first M output channels and the backward cell the last M, so the concatenated memories
  ``[M_forward, M_backward]`` are as wide as the map the static heads read and every head
  copies unchanged. This is R-FCN's case: its feature reduction ``backbone.reduction`` (1024
  channels, dilation 6: ``MODEL.STMN.DILATION`` must match) becomes two 512-channel memories
  (``configs/stmn_R101_RFCN.yaml``, whose STMM reads res5 of the same ResNet). Where the static
  heads each read one half of the map (``MODEL.RFCN.SPLIT_FEATURES``: the RPN the first, R-FCN
  the second) and the STMN heads the whole of it, a head's input weights are placed on its half
  and zero on the other, which again gives the static detector's outputs.
* **duplicate** (M output channels): both cells take the whole convolution. DC5 Faster R-CNN
  has no such layer (the heads read res5), so its static detector is the one with
  :class:`~vod_d2.modeling.temporal.stmn.STMNSingleFrameAggregation` (``ReLU(W * res5)``
  before the heads, ``configs/stmn_R101_DC5_static.yaml``). The layers that read the
  aggregated map see twice the channels of the single-frame feature; they are widened so that
  the detector is unchanged when both memories equal the single-frame feature: a dimension of
  size 2 n where the source has n is filled with two copies, halved when it is an input
  dimension (dim 1), e.g. the RPN conv ``[[W/2, W/2], [W/2, W/2]]``, its objectness
  ``[w/2, w/2]``, the box head's first fc ``[W/2, W/2]`` (channel-major flattening puts the
  forward memory's channels first).

``--source-conv auto`` (the default) takes the first of ``temporal_aggregation.feature_conv``
and ``backbone.reduction`` the checkpoint has. Every other tensor (backbone, RPN, ROI heads)
with the same name and shape is copied; tensors with no counterpart keep the model's
initialisation, and each is logged.

A plain single-frame checkpoint (``SingleFrameAggregation``, no such conv) is the static detector
with an identity conv before its heads, since the map it reads is post-ReLU: when
``MODEL.STMN.MEMORY_CHANNELS`` equals the map's width, ``W_z``, ``W_r`` and ``W`` start as that
identity (``configs/synthetic/stmn.yaml`` is set up so). Otherwise pass ``--source-conv ""`` to
take the backbone and heads only (the cells then start fresh).
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["DEFAULT_SOURCE_CONV", "TransferReport", "transfer_single_frame_weights"]

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_CONV = "auto"
#: The convs ``"auto"`` looks for, in order: STMNSingleFrameAggregation's, R-FCN's reduction.
AUTO_SOURCE_CONVS = ("temporal_aggregation.feature_conv", "backbone.reduction")
_CELL_SUFFIX = ".cell.input_conv"
_DIRECTIONS = ("forward_memory", "backward_memory")
_NOT_HEADS = ("backbone.", "temporal_aggregation.")
# The half of a split map each head reads (MODEL.RFCN.SPLIT_FEATURES: rpn_features, rfcn_features).
_HEAD_HALVES = (("proposal_generator.", 0), ("roi_heads.", 1))


@dataclass
class TransferReport:
    """What :func:`transfer_single_frame_weights` did to each tensor of the target model."""

    #: How the source conv became the cells: "split", "duplicate", "identity" or "" (none).
    mapping: str = ""
    converted: List[str] = field(default_factory=list)
    copied: List[str] = field(default_factory=list)
    widened: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)


def transfer_single_frame_weights(
    source: Dict[str, torch.Tensor],
    target: Dict[str, torch.Tensor],
    source_conv: Optional[str] = DEFAULT_SOURCE_CONV,
) -> Tuple[Dict[str, torch.Tensor], TransferReport]:
    """
    Map a single-frame state dict onto an STMN model's (see the module docstring).

    Args:
        source: state dict of the single-frame detector.
        target: state dict of the STMN model (its initialisation; not modified).
        source_conv: name (without ``.weight``) of the source conv that becomes
            ``W_z, W_r, W``; "auto" for the first of :data:`AUTO_SOURCE_CONVS` in ``source``
            (or an identity conv for a plain single-frame checkpoint); None or "" to leave the
            cells as initialised.

    Returns:
        tuple: the new state dict for the STMN model and a :class:`TransferReport`.
    """
    result = {k: v.clone() for k, v in target.items()}
    report = TransferReport()
    cells = [
        k[: -len(".weight")]
        for direction in _DIRECTIONS
        for k in target
        if k.endswith(_CELL_SUFFIX + ".weight") and f".{direction}." in k
    ]
    if not cells:
        raise ValueError(
            "the target model has no STMN cell (no '*.cell.input_conv.weight'): build it with "
            "MODEL.VIDEO.AGGREGATION STMNAggregation"
        )
    if source_conv:
        report.mapping = _convert(source, source_conv, cells, result)
        report.converted = [k for k in target if any(k.startswith(c + ".") for c in cells)]

    for key, value in target.items():
        if key in report.converted:
            continue
        src = source.get(key)
        if src is not None and src.shape == value.shape:
            result[key] = src.to(value.dtype).clone()
            report.copied.append(key)
            continue
        widened = None
        if src is not None and not key.startswith(_NOT_HEADS):
            if report.mapping == "split":
                widened = _place_on_half(key, src, value.shape)
            else:
                widened = _widen(src, value.shape)
        if widened is None:
            report.kept_init.append(key)
        else:
            result[key] = widened.to(value.dtype)
            report.widened.append(key)
    return result, report


def _convert(source, source_conv, cells, result) -> str:
    """Copy the source conv into W_z, W_r, W of ``cells`` (forward first); the mapping used."""
    target_weight = result[cells[0] + ".weight"]
    memory = target_weight.shape[0] // 3
    expected = (memory, *target_weight.shape[1:])
    if source_conv == "auto":
        found = [c for c in AUTO_SOURCE_CONVS if c + ".weight" in source]
        plain = not any(k.startswith("temporal_aggregation.") for k in source)
        if not found and plain and expected[0] == expected[1]:
            _identity_cells(cells, expected, result)
            return "identity"
        source_conv = found[0] if found else AUTO_SOURCE_CONVS[0]
    weight_key = source_conv + ".weight"
    if weight_key not in source:
        candidates = [
            k[: -len(".weight")]
            for k, v in source.items()
            if k.endswith(".weight") and v.dim() == 4 and v.shape[1] == expected[1]
        ]
        raise KeyError(
            f"the single-frame checkpoint has no {weight_key!r} to initialise W_z, W_r, W; "
            f"convs reading {expected[1]} channels in it: {candidates}. Pass one as "
            f"--source-conv, or --source-conv '' to skip the conversion"
        )
    weight = source[weight_key]
    bias = source.get(source_conv + ".bias")
    if bias is None:
        bias = torch.zeros(weight.shape[0])
    if tuple(weight.shape[1:]) == expected[1:] and weight.shape[0] == memory:
        mapping, blocks = "duplicate", [(weight, bias)] * len(cells)
    elif (
        tuple(weight.shape[1:]) == expected[1:] and weight.shape[0] == len(cells) * memory > memory
    ):
        mapping = "split"
        blocks = list(zip(weight.split(memory), bias.split(memory)))
    else:
        raise ValueError(
            f"{weight_key!r} has shape {tuple(weight.shape)}, but {cells[0]} needs W_z, W_r, W "
            f"of shape {expected} (MODEL.STMN.MEMORY_CHANNELS, input channels, KERNEL_SIZE): "
            f"the conv must have M = {memory} output channels (each memory takes it whole) or "
            f"{len(cells)} M (each memory takes its share), and read the same map"
        )
    for cell, (w, b) in zip(cells, blocks):
        result[cell + ".weight"] = w.repeat(3, 1, 1, 1).to(target_weight.dtype)
        if cell + ".bias" in result:
            result[cell + ".bias"] = b.repeat(3).to(result[cell + ".bias"].dtype)
    return mapping


def _identity_cells(cells, expected, result):
    """
    A plain single-frame detector is the static detector with an identity conv before the
    heads: its map (a ResNet stage's output) is post-ReLU, so ReLU(I * F) = F.
    """
    dtype = result[cells[0] + ".weight"].dtype
    weight = torch.zeros(expected, dtype=dtype)
    center = expected[2] // 2, expected[3] // 2
    weight[:, :, center[0], center[1]] = torch.eye(expected[0])
    for cell in cells:
        result[cell + ".weight"] = weight.repeat(3, 1, 1, 1)
        if cell + ".bias" in result:
            result[cell + ".bias"] = torch.zeros_like(result[cell + ".bias"])


def _widen(src: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    """
    ``src`` widened to ``shape`` when dims 0 and/or 1 double: dim 0 (outputs) gets two
    copies, dim 1 (inputs) two halves, so that ``f(x) = f'([x, x])``. None otherwise.
    """
    if src.dim() != len(shape) or src.dim() == 0:
        return None
    out = src
    if shape[0] == 2 * src.shape[0]:
        out = torch.cat([out, out], dim=0)
    if src.dim() > 1 and shape[1] == 2 * src.shape[1]:
        out = torch.cat([out / 2, out / 2], dim=1)
    return out if out.shape == shape else None


def _place_on_half(key: str, src: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    """
    The input weights of a head that read one half of the static map (R-FCN's split), for a
    head that reads the whole of it: ``src`` on that half of dim 1, zeros on the other, so that
    ``f(x_half) = f'(x)``. None unless dim 1 alone doubles, or for a module that is no head.
    """
    halves = [half for prefix, half in _HEAD_HALVES if key.startswith(prefix)]
    if not halves or src.dim() < 2 or shape[1] != 2 * src.shape[1]:
        return None
    if (shape[0], *shape[2:]) != (src.shape[0], *src.shape[2:]):
        return None
    out = src.new_zeros(shape)
    width = src.shape[1]
    out[:, halves[0] * width : (halves[0] + 1) * width] = src
    return out
