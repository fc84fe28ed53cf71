"""
Flow pretraining on synthetic frame pairs, the project's FlyingChairs.

Deep Feature Flow and Impression Network start their FlowNet-S from FlyingChairs pretraining;
a flow network learned from the detection loss alone does not learn to move features (measured
on the synthetic videos: after 300 iterations it predicts 0.05-0.10 feature cells, so non-key
frames reuse stale key features). :func:`vod_d2.data.synthetic.render_flow_pair` knows every
pixel's motion, so the same role is played here by pairs of synthetic frames and their exact
flow.

The loss is FlowNet's multi-scale end-point error (EPE): every level the network predicts
(:meth:`FlowNetwork.multiscale_flows`) against the ground truth averaged over its cells, with
FlowNet's weights 0.32, 0.08, 0.02, 0.01, 0.005 from the coarsest level to the stride-16 flow the
detector uses. Reported EPEs are those of that flow, in feature cells (pixels / 16). The scale
map S is not trained here (no feature to scale): it stays 1, as it starts in the papers.
:func:`pretrain_flow` returns the EPE on held-back pairs, with the EPE of zero flow (what an
untrained FlowNet-S predicts) for comparison, and the curve of that EPE during training;
:func:`save_pretrained` writes a checkpoint that ``MODEL.FLOW.WEIGHTS`` loads
(:meth:`FlowNetwork.pretrained_state`). A network built with ``MODEL.FLOW.WEIGHTS`` (RAFT-small
from FlyingChairs + FlyingThings3D) is fine-tuned from them.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...data.synthetic import flow_pair_rng, render_flow_pair
from .base import FEATURE_STRIDE, FlowNetwork, feature_flow

__all__ = [
    "FlowPretrainResult",
    "flow_pairs",
    "feature_flow",
    "evaluate_epe",
    "pretrain_flow",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

# The held-back pairs come from their own seed, never drawn in training.
_HELD_BACK_SEED = 1_000_003


@dataclass(frozen=True)
class FlowPretrainResult:
    """
    Attributes:
        epe (float): mean end-point error on the held-back pairs, in feature cells.
        zero_epe (float): the same for zero flow.
        losses (list[float]): the training EPE of the stride-16 flow (feature cells), averaged
            over every ``log_period`` steps.
        seconds (float): training time (the curve's evaluations excluded).
        curve (list[dict]): the held-back EPE during training, every ``eval_period`` steps
            from step 0 (the start) to the end: ``{"step", "epe", "zero_epe",
            "background_epe", "background_zero_epe"}``, EPEs in feature cells on whole scenes
            and on their backgrounds alone. Empty without ``eval_period``.
    """

    epe: float
    zero_epe: float
    losses: list
    seconds: float
    curve: List[Dict] = field(default_factory=list)


def flow_pairs(
    seed: int,
    start: int,
    count: int,
    size: Tuple[int, int],
    input_format: str,
    objects: bool = True,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """
    Pairs ``start .. start + count - 1`` of ``seed`` as a flow network takes them (with
    ``objects`` False: their panning backgrounds alone).

    Yields:
        tuple: ``cur``, ``ref`` (3, H, W) float32 frames in [0, 255], channels in
        ``input_format`` order, and ``flow`` (2, H, W) float32 in pixels (see
        :func:`~vod_d2.data.synthetic.render_flow_pair`).
    """
    for index in range(start, start + count):
        cur, ref, flow = render_flow_pair(flow_pair_rng(seed, index), size, objects=objects)
        frames = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) for x in (cur, ref)]
        if input_format == "BGR":
            frames = [x.flip(0) for x in frames]
        yield frames[0].float(), frames[1].float(), torch.from_numpy(flow)


def _batch(pairs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cur, ref, flow = zip(*pairs)
    return torch.stack(cur), torch.stack(ref), torch.stack(flow)


def _epe(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean end-point error of (N, 2, h, w) flows."""
    return (predicted - target).norm(dim=1).mean()


# FlowNet's multi-scale loss weights, coarsest level first (ClementPinard's multiscaleEPE).
_LEVEL_WEIGHTS = (0.32, 0.08, 0.02, 0.01, 0.005)
# The levels' errors in FlowNet's training unit, div_flow (20) pixels of its half-resolution
# input: 40 pixels of the frame.
_LOSS_UNIT = 40.0


def _pooled_like(flow: torch.Tensor, predicted: torch.Tensor, stride: float) -> torch.Tensor:
    """
    The ground truth at a prediction's cells: ``stride`` x ``stride`` pixels averaged (ceil
    mode) when ``stride`` is an integer, else an adaptive average onto the prediction's size.
    """
    if float(stride).is_integer():
        target = F.avg_pool2d(flow, int(stride), ceil_mode=True)
    else:
        target = F.adaptive_avg_pool2d(flow, predicted.shape[-2:])
    if target.shape[-2:] != predicted.shape[-2:]:
        raise ValueError(
            f"a flow prediction of {tuple(predicted.shape[-2:])} cells at stride {stride} does "
            f"not cover {tuple(flow.shape[-2:])}-pixel frames"
        )
    return target


def _multiscale_loss(flow_net: FlowNetwork, cur, ref, flow) -> Tuple[torch.Tensor, float]:
    """The weighted multi-scale EPE, and the EPE of the stride-16 flow in feature cells."""
    levels = flow_net.multiscale_flows(cur, ref)
    weights = _LEVEL_WEIGHTS[-len(levels) :]
    loss = 0.0
    for (predicted, stride), weight in zip(levels, weights):
        target = _pooled_like(flow, predicted, stride)
        loss = loss + weight * _epe(predicted, target) / _LOSS_UNIT
    final, stride = levels[-1]
    return loss, _epe(final, _pooled_like(flow, final, stride)).item() / stride


@torch.no_grad()
def evaluate_epe(
    flow_net: FlowNetwork,
    num_pairs: int,
    size: Tuple[int, int],
    input_format: str,
    objects: bool = True,
) -> Tuple[float, float]:
    """
    EPE of ``flow_net`` and of zero flow on the held-back pairs (whole scenes, or with
    ``objects`` False their backgrounds alone), in feature cells.

    Returns:
        tuple[float, float]: (the network's EPE, zero flow's EPE).
    """
    was_training = flow_net.training
    flow_net.eval()
    epe = zero = 0.0
    pairs = list(flow_pairs(_HELD_BACK_SEED, 0, num_pairs, size, input_format, objects))
    for begin in range(0, num_pairs, 16):
        cur, ref, flow = _batch(pairs[begin : begin + 16])
        target = feature_flow(flow)
        predicted, _ = flow_net(cur, ref)
        epe += _epe(predicted, target).item() * len(cur)
        zero += target.norm(dim=1).mean().item() * len(cur)
    flow_net.train(was_training)
    return epe / num_pairs, zero / num_pairs


def pretrain_flow(
    flow_net: FlowNetwork,
    *,
    iterations: int,
    size: Tuple[int, int] = (128, 160),
    input_format: str = "BGR",
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    held_back: int = 200,
    log_period: int = 100,
    background_first: float = 0.4,
    eval_period: int = 0,
    eval_pairs: int = 48,
    clip_grad_norm: Optional[float] = None,
) -> FlowPretrainResult:
    """
    Train ``flow_net`` on synthetic pairs with FlowNet's multi-scale EPE (module docstring).

    Adam at ``lr``, divided by 10 after 2/3 of the iterations; every pair is new (pair
    ``i`` of ``seed`` is drawn once), so there is nothing to overfit. A schedule of data, as
    FlowNet 2.0 trains on FlyingChairs before FlyingThings3D: the first ``background_first``
    of the steps see the panning backgrounds alone, then whole scenes. From whole scenes at once
    the network does not learn within a CPU budget (measured: 3000 steps end within 1% of zero
    flow's EPE): the objects' motions, up to 35 px on 128-px frames over 10 frames, drown the
    background's; on backgrounds alone 800 steps take the EPE 39% below zero flow's. A network
    that starts pretrained (RAFT-small's FlyingChairs + FlyingThings3D weights) needs no such
    start: ``background_first`` 0, a smaller ``lr`` and ``clip_grad_norm`` (RAFT's training
    clips at 1) fine-tune it.

    Args:
        flow_net: the network to train (its scale map is not trained).
        iterations: optimisation steps.
        size: (H, W) of the frames, the detector's input size.
        input_format: channel order the network is given (``INPUT.FORMAT``).
        batch_size: pairs per step.
        lr: Adam's learning rate.
        seed: seed of the training pairs.
        held_back: pairs of their own seed on which the final EPE is reported.
        log_period: steps between logged losses.
        background_first: the share of the steps on backgrounds alone.
        eval_period: steps between the points of the held-back EPE curve (0: no curve).
        eval_pairs: held-back pairs of each curve point (the first of the ``held_back``).
        clip_grad_norm: clip the gradients' norm to this before each step (None: no clipping).

    Returns:
        FlowPretrainResult
    """
    params = [
        p
        for name, p in flow_net.named_parameters()
        if not name.startswith("scale.") and p.requires_grad
    ]
    if not params:
        raise ValueError(f"{type(flow_net).__name__} has no weights to train")
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2 * iterations // 3], 0.1)
    losses, window, curve = [], [], []
    seconds = 0.0

    def curve_point(step: int) -> None:
        epe, zero = evaluate_epe(flow_net, eval_pairs, size, input_format)
        background, background_zero = evaluate_epe(
            flow_net, eval_pairs, size, input_format, objects=False
        )
        curve.append(
            {
                "step": step,
                "epe": epe,
                "zero_epe": zero,
                "background_epe": background,
                "background_zero_epe": background_zero,
            }
        )
        logger.info(
            f"flow pretraining step {step}: held-back EPE {epe:.4f} cells (zero flow "
            f"{zero:.4f}), backgrounds {background:.4f} (zero flow {background_zero:.4f})"
        )

    if eval_period:
        curve_point(0)
    flow_net.train()
    for step in range(iterations):
        start = time.perf_counter()
        objects = step >= background_first * iterations
        cur, ref, flow = _batch(
            flow_pairs(seed, step * batch_size, batch_size, size, input_format, objects)
        )
        loss, epe = _multiscale_loss(flow_net, cur, ref, flow)
        optimizer.zero_grad()
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
        scheduler.step()
        seconds += time.perf_counter() - start
        window.append(epe)
        if (step + 1) % log_period == 0 or step + 1 == iterations:
            losses.append(float(np.mean(window)))
            logger.info(f"flow pretraining {step + 1}/{iterations}: EPE {losses[-1]:.4f} cells")
            window = []
        if eval_period and ((step + 1) % eval_period == 0 or step + 1 == iterations):
            curve_point(step + 1)
            flow_net.train()
    epe, zero = evaluate_epe(flow_net, held_back, size, input_format)
    logger.info(
        f"held-back EPE {epe:.4f} feature cells ({epe * FEATURE_STRIDE:.2f} px) against "
        f"{zero:.4f} ({zero * FEATURE_STRIDE:.2f} px) for zero flow"
    )
    return FlowPretrainResult(epe, zero, losses, seconds, curve)


def save_pretrained(flow_net: FlowNetwork, path: str, result: FlowPretrainResult) -> None:
    """Write ``flow_net``'s weights for ``MODEL.FLOW.WEIGHTS``, with the pretraining's EPEs."""
    checkpoint: Dict = flow_net.pretrained_state()
    checkpoint["synthetic_pretraining"] = {
        "epe": result.epe,
        "zero_epe": result.zero_epe,
        "curve": result.curve,
    }
    partial = f"{path}.partial"
    torch.save(checkpoint, partial)
    os.replace(partial, path)
