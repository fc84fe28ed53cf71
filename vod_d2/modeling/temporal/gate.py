"""
The residual gates that make every temporal module start as the single-frame detector.

A video method is fine-tuned from a single-frame detector of its head (DESIGN.md, "Measuring
accuracy"), and its new modules, randomly initialised, would otherwise change that detector's
features at iteration 0: the heads then spend the fine-tuning repairing what the new modules
disturbed. Every aggregation instead ends in

    out = reference + g * (aggregated - reference)

with ``reference`` what the single-frame detector (or the method's static counterpart: SSN for
STSN, the transferred static feature for STMN, the key frame's own feature for a key-frame
memory, the propagated key feature for LSTS's non-key frames) computes, ``aggregated`` the
paper's module output, and ``g = 0`` at the start. The module itself is left as its paper
defines it. ``MODEL.VIDEO.GATE.KIND`` says what ``g`` is:

* ``"channel"``: one learned scale per channel (:class:`ResidualGate`), the ``gamma = 0``
  start of ReZero / SkipInit and of zero-initialised residual branches (Goyal et al. 2017).
  Training opens it only as far as its own gradient takes it, and a closed gate also scales the
  gradient reaching the module down to nothing: on the benchmark it stays at 0.01-0.03 (README).
* ``"scheduled"`` (the default, chosen by the benchmark: README): no parameter, ``g`` follows
  the fine-tuning iteration, 0 at iteration 0 and rising linearly to 1 at
  ``MODEL.VIDEO.GATE.OPEN_ITERS`` (:class:`ScheduledGate`). From then on
  the output is exactly the paper's module: the run starts as the single-frame detector and ends
  as the paper defines the method, and the heads adapt to the aggregated features on the way.
* ``"position"``: ``g`` computed at every position from the reference and the aggregated
  features by a 1x1 conv that starts at zero (:class:`PositionGate`), so it can take the
  neighbours where the reference is degraded and the reference where it is sharp, as STSN's
  similarity weights and Impression's quality network do. ``g`` is not bounded: on the
  benchmark it leaves [0, 1] within 20 iterations and STMN with it loses to its single frame
  (README).

``MODEL.VIDEO.IDENTITY_INIT False`` removes the gate (the papers' random starts).
"""

from dataclasses import dataclass
from typing import Dict

import torch
from detectron2.utils.events import get_event_storage
from torch import nn

__all__ = [
    "GATE_KINDS",
    "Gate",
    "GateSpec",
    "PositionGate",
    "ResidualGate",
    "ScheduledGate",
    "gate_opening",
    "maybe_gate",
]

GATE_KINDS = ("channel", "scheduled", "position")


def _check_shapes(gate: nn.Module, reference: torch.Tensor, aggregated: torch.Tensor) -> None:
    if reference.shape != aggregated.shape:
        raise ValueError(
            f"{type(gate).__name__}: reference {tuple(reference.shape)} and aggregated "
            f"{tuple(aggregated.shape)} must have one shape"
        )


class Gate(nn.Module):
    """What every gate has: how far it is open, a way to fix it there, and the trainer's record
    of it (:class:`vod_d2.engine.trainer.ModuleRecordsWriter`)."""

    def opening(self) -> float:
        """How far the gate is open: 0 the reference (the start), 1 the paper's module."""
        raise NotImplementedError

    def fix_opening(self, value: float) -> None:
        """Fix the opening at ``value`` (diagnostics: closed, open, in between)."""
        raise NotImplementedError

    def training_records(self) -> Dict[str, float]:
        return {"gate": self.opening()}


class ResidualGate(Gate):
    """``reference + gamma * (aggregated - reference)``, one ``gamma`` per channel, zero at init."""

    def __init__(self, channels: int):
        """
        Args:
            channels: C, the channels of the gated maps.
        """
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))

    def forward(self, reference: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """
        Args:
            reference (Tensor): (..., C, H, W) what the module starts as.
            aggregated (Tensor): (..., C, H, W) what the module computes, same shape.

        Returns:
            Tensor: (..., C, H, W) the gated output (``reference`` exactly while gamma is 0).
        """
        _check_shapes(self, reference, aggregated)
        return reference + self.gamma.view(-1, 1, 1) * (aggregated - reference)

    def opening(self) -> float:
        """The mean of gamma over channels (0: closed, 1: the paper's module)."""
        return float(self.gamma.detach().mean())

    @torch.no_grad()
    def fix_opening(self, value: float) -> None:
        """Set every channel's gamma to ``value``."""
        self.gamma.fill_(value)

    def extra_repr(self) -> str:
        return f"channels={self.gamma.numel()}"


def _training_iteration() -> int:
    """The iteration of detectron2's training loop (its current ``EventStorage``)."""
    try:
        return get_event_storage().iter
    except AssertionError:
        raise RuntimeError(
            "ScheduledGate (MODEL.VIDEO.GATE.KIND 'scheduled', the default) opens with the "
            "training iteration of detectron2's EventStorage, and this training forward runs "
            "outside one: train with detectron2's trainers (or inside `with EventStorage(iter):`"
            "), or choose MODEL.VIDEO.GATE.KIND 'channel'"
        ) from None


class ScheduledGate(Gate):
    """
    ``reference + g * (aggregated - reference)`` with ``g = min(1, iteration / open_iters)``,
    ``iteration`` that of detectron2's training loop (its ``EventStorage``), read at every
    training forward and kept in the buffer ``g`` for inference (and checkpoints): a model loaded
    from a single-frame checkpoint has ``g = 0``, one trained past ``open_iters`` ``g = 1``. At
    ``g = 1`` the output is ``aggregated`` itself.
    """

    def __init__(self, open_iters: int):
        """
        Args:
            open_iters: iterations over which ``g`` rises from 0 to 1 (>= 1).
        """
        super().__init__()
        if open_iters < 1:
            raise ValueError(f"MODEL.VIDEO.GATE.OPEN_ITERS must be >= 1, got {open_iters}")
        self.open_iters = open_iters
        self.register_buffer("g", torch.zeros(()))

    def forward(self, reference: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """
        Args:
            reference (Tensor): (..., C, H, W) what the module starts as.
            aggregated (Tensor): (..., C, H, W) what the module computes, same shape.

        Returns:
            Tensor: (..., C, H, W) the gated output: ``reference`` exactly at ``g = 0``,
            ``aggregated`` exactly at ``g = 1``.
        """
        _check_shapes(self, reference, aggregated)
        g = self.g
        if self.training:
            # A new tensor for the graph: the buffer may be refilled by a later call in the same
            # forward (STMN gates every frame of its sequence), which autograd would refuse.
            opening = min(1.0, _training_iteration() / self.open_iters)
            g = torch.tensor(opening, dtype=reference.dtype, device=reference.device)
            self.g.fill_(opening)
        # lerp computes start + g * (end - start) for g < 0.5 and end - (1 - g) * (end - start)
        # above: exactly the reference at 0 and exactly the module's output at 1.
        return torch.lerp(reference, aggregated, g)

    def opening(self) -> float:
        return float(self.g)

    @torch.no_grad()
    def fix_opening(self, value: float) -> None:
        """Set ``g`` to ``value`` (until the next training forward)."""
        self.g.fill_(value)

    def extra_repr(self) -> str:
        return f"open_iters={self.open_iters}"


class PositionGate(Gate):
    """
    ``reference + g * (aggregated - reference)`` with ``g`` (one value per position) a 1x1 conv
    of the two maps concatenated, weights and bias zero at init.
    """

    def __init__(self, channels: int):
        """
        Args:
            channels: C, the channels of the gated maps.
        """
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 1, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self._last_mean = torch.zeros(())

    def gate(self, reference: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """
        Args:
            reference, aggregated (Tensor): (..., C, H, W).

        Returns:
            Tensor: (..., 1, H, W) ``g`` at every position.
        """
        pair = torch.cat([reference, aggregated], dim=-3)
        return self.conv(pair.flatten(0, -4)).unflatten(0, pair.shape[:-3])

    def forward(self, reference: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """
        Args:
            reference (Tensor): (..., C, H, W) what the module starts as.
            aggregated (Tensor): (..., C, H, W) what the module computes, same shape.

        Returns:
            Tensor: (..., C, H, W) the gated output (``reference`` exactly while the conv is 0).
        """
        _check_shapes(self, reference, aggregated)
        g = self.gate(reference, aggregated)
        if self.training:
            self._last_mean = g.detach().mean()
        return reference + g * (aggregated - reference)

    def opening(self) -> float:
        """The mean of ``g`` over the positions of the last training batch."""
        return float(self._last_mean)

    @torch.no_grad()
    def fix_opening(self, value: float) -> None:
        """Make ``g`` equal ``value`` at every position (the conv's weights zero, its bias)."""
        self.conv.weight.zero_()
        self.conv.bias.fill_(value)

    def extra_repr(self) -> str:
        return f"channels={self.conv.in_channels // 2}"


@dataclass(frozen=True)
class GateSpec:
    """The gate ``MODEL.VIDEO.GATE`` asks for."""

    kind: str = "scheduled"  # one of GATE_KINDS (the config's defaults)
    open_iters: int = 400  # "scheduled" only

    @classmethod
    def from_config(cls, cfg) -> "GateSpec":
        gate = cfg.MODEL.VIDEO.GATE
        if gate.KIND not in GATE_KINDS:
            raise ValueError(
                f"MODEL.VIDEO.GATE.KIND must be one of {GATE_KINDS}, got {gate.KIND!r}"
            )
        return cls(gate.KIND, gate.OPEN_ITERS)


def maybe_gate(identity_init: bool, channels: int, spec: GateSpec = GateSpec()):
    """
    The gate ``spec`` names over ``channels``-channel maps with ``MODEL.VIDEO.IDENTITY_INIT``,
    else None (the paper's module output, ungated).
    """
    if not identity_init:
        return None
    if spec.kind == "scheduled":
        return ScheduledGate(spec.open_iters)
    if spec.kind == "position":
        return PositionGate(channels)
    return ResidualGate(channels)


def gate_opening(model: nn.Module) -> Dict[str, float]:
    """
    How far each gate of ``model`` is open (0: the single-frame start, 1: the paper's module),
    by module name: the mean ``gamma``, the schedule's ``g`` or the position gates' mean ``g``
    over the last training batch.
    """
    return {name: m.opening() for name, m in model.named_modules() if isinstance(m, Gate)}
