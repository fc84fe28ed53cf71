"""
Start STMN from a single-frame checkpoint (the weight transfer of §3.2)::

    python -m vod_d2.modeling.temporal.weight_transfer --config-file configs/stmn_R50_DC5.yaml \\
        --input output/stmn_single_frame/model_final.pth --output stmn_init.pth
    python train_net.py --config-file configs/stmn_R50_DC5.yaml MODEL.WEIGHTS stmn_init.pth

The paper initialises ``W_z``, ``W_r`` and ``W`` (Eq. 1-3) with the weights of the convolution
the STMM replaces, the last one between the backbone and the RoI pooling, and keeps every other
pretrained layer. Our DC5 Faster R-CNN has no such convolution, so the single-frame detector to
start from is the one with :class:`~vod_d2.modeling.temporal.stmn.STMNSingleFrameAggregation`
(``ReLU(W * res5)`` before the heads; train it with the STMN config and
``MODEL.VIDEO.AGGREGATION STMNSingleFrameAggregation INPUT.VIDEO.TRAIN_SAMPLING none
MODEL.VIDEO.TEST_WINDOW "(0, 0)"``). The mapping, from that checkpoint to the STMN model the
config builds:

* ``temporal_aggregation.feature_conv`` (or the conv named by ``--source-conv``, weight
  (M, C_in, k, k)) -> ``W_z``, ``W_r`` and ``W`` of every direction's cell, i.e. each of the
  three output blocks of ``temporal_aggregation.*_memory.cell.input_conv``. ``U_z, U_r, U`` keep
  their fresh initialisation.
* Every other tensor (backbone, RPN, ROI heads) with the same name and shape is copied.
* The layers that read the aggregated map see ``[M_forward, M_backward]``, twice the channels
  of the single-frame feature. They are widened so that the detector is unchanged when both
  memories equal the single-frame feature: a dimension of size 2 n where the source has n is
  filled with two copies, halved when it is an input dimension (dim 1), e.g. the RPN conv
  ``[[W/2, W/2], [W/2, W/2]]``, its objectness ``[w/2, w/2]``, the box head's first fc
  ``[W/2, W/2]`` (channel-major flattening puts the forward memory's channels first).
* Tensors with no counterpart keep the model's initialisation; each is logged.

A plain single-frame checkpoint (``SingleFrameAggregation``, no such conv) is the static detector
with an identity conv before its heads, since the map it reads is post-ReLU: when
``MODEL.STMN.MEMORY_CHANNELS`` equals the map's width, ``W_z``, ``W_r`` and ``W`` start as that
identity (``configs/synthetic/stmn.yaml`` is set up so). Otherwise pass ``--source-conv ""`` to
take the backbone and heads only (the cells then start fresh).
"""

import argparse
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["TransferReport", "transfer_single_frame_weights", "convert_checkpoint"]

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_CONV = "temporal_aggregation.feature_conv"
_CELL_SUFFIX = ".cell.input_conv"
_NOT_HEADS = ("backbone.", "temporal_aggregation.")


@dataclass
class TransferReport:
    """What :func:`transfer_single_frame_weights` did to each tensor of the target model."""

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
            ``W_z, W_r, W``; None or "" to leave the cells as initialised.

    Returns:
        tuple: the new state dict for the STMN model and a :class:`TransferReport`.
    """
    result = {k: v.clone() for k, v in target.items()}
    report = TransferReport()
    cells = sorted(k[: -len(".weight")] for k in target if k.endswith(_CELL_SUFFIX + ".weight"))
    if not cells:
        raise ValueError(
            "the target model has no STMN cell (no '*.cell.input_conv.weight'): build it with "
            "MODEL.VIDEO.AGGREGATION STMNAggregation"
        )
    if source_conv:
        for cell in cells:
            _convert(source, source_conv, cell, result)
            report.converted += [k for k in target if k.startswith(cell + ".")]

    for key, value in target.items():
        if key in report.converted:
            continue
        src = source.get(key)
        if src is not None and src.shape == value.shape:
            result[key] = src.to(value.dtype).clone()
            report.copied.append(key)
            continue
        widened = None if src is None or key.startswith(_NOT_HEADS) else _widen(src, value.shape)
        if widened is None:
            report.kept_init.append(key)
        else:
            result[key] = widened.to(value.dtype)
            report.widened.append(key)
    return result, report


def _convert(source, source_conv, cell, result):
    """Copy ``source_conv`` into the three output blocks (W_z, W_r, W) of ``cell``."""
    weight_key = source_conv + ".weight"
    target_weight = result[cell + ".weight"]
    expected = (target_weight.shape[0] // 3, *target_weight.shape[1:])
    plain = not any(k.startswith("temporal_aggregation.") for k in source)
    if weight_key not in source and plain and expected[0] == expected[1]:
        # A plain single-frame detector is the static detector with an identity conv before
        # the heads: its map (a ResNet stage's output) is post-ReLU, so ReLU(I * F) = F.
        weight = torch.zeros(expected, dtype=target_weight.dtype)
        center = expected[2] // 2, expected[3] // 2
        weight[:, :, center[0], center[1]] = torch.eye(expected[0])
        result[cell + ".weight"] = weight.repeat(3, 1, 1, 1)
        if cell + ".bias" in result:
            result[cell + ".bias"] = torch.zeros_like(result[cell + ".bias"])
        return
    if weight_key not in source:
        target_shape = tuple(result[cell + ".weight"].shape)
        candidates = [
            k[: -len(".weight")]
            for k, v in source.items()
            if k.endswith(".weight") and v.dim() == 4 and v.shape[1] == target_shape[1]
        ]
        raise KeyError(
            f"the single-frame checkpoint has no {weight_key!r} to initialise W_z, W_r, W; "
            f"convs reading {target_shape[1]} channels in it: {candidates}. Pass one as "
            f"--source-conv, or --source-conv '' to skip the conversion"
        )
    weight = source[weight_key]
    bias = source.get(source_conv + ".bias")
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"{weight_key!r} has shape {tuple(weight.shape)}, but {cell} needs W_z, W_r, W of "
            f"shape {expected} (MODEL.STMN.MEMORY_CHANNELS, input channels, KERNEL_SIZE)"
        )
    result[cell + ".weight"] = weight.repeat(3, 1, 1, 1).to(target_weight.dtype)
    if cell + ".bias" in result:
        bias = torch.zeros(expected[0]) if bias is None else bias
        result[cell + ".bias"] = bias.repeat(3).to(result[cell + ".bias"].dtype)


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


def _load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a detectron2 .pth checkpoint (a 'model' state dict)")
    return state


def convert_checkpoint(cfg, input_path: str, output_path: str, source_conv=DEFAULT_SOURCE_CONV):
    """
    Write an STMN checkpoint initialised from a single-frame one.

    Args:
        cfg: config of the STMN model (with the vod_d2 keys).
        input_path: the single-frame detector's ``.pth`` checkpoint.
        output_path: where to write ``{"model": state_dict}`` for ``MODEL.WEIGHTS``.
        source_conv: see :func:`transfer_single_frame_weights`.

    Returns:
        TransferReport
    """
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    target = build_model(cfg).state_dict()
    state, report = transfer_single_frame_weights(_load_state_dict(input_path), target, source_conv)
    logger.info(
        f"{input_path} -> {output_path}: {len(report.converted)} converted into STMN cells, "
        f"{len(report.copied)} copied, {len(report.widened)} widened, "
        f"{len(report.kept_init)} left at initialisation"
    )
    for name in ("converted", "widened", "kept_init"):
        for key in getattr(report, name):
            logger.info(f"  {name}: {key}")
    torch.save({"model": state}, output_path)
    return report


def main(argv=None):
    from detectron2.config import get_cfg
    from detectron2.utils.logger import setup_logger

    from vod_d2 import add_vod_config

    parser = argparse.ArgumentParser(description=__doc__.split("::")[0].strip())
    parser.add_argument("--config-file", required=True, help="config of the STMN model")
    parser.add_argument("--input", required=True, help="single-frame .pth checkpoint")
    parser.add_argument("--output", required=True, help="STMN .pth checkpoint to write")
    parser.add_argument(
        "--source-conv",
        default=DEFAULT_SOURCE_CONV,
        help="conv of the checkpoint that becomes W_z, W_r, W ('' to skip)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="vod_d2")
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    convert_checkpoint(cfg, args.input, args.output, args.source_conv)


if __name__ == "__main__":
    main()
