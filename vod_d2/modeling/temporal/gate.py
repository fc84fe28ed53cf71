"""
The residual gate that makes every temporal module start as the single-frame detector.

A video method is fine-tuned from a single-frame detector of its head (DESIGN.md, "Measuring
accuracy"), and its new modules, randomly initialised, would otherwise change that detector's
features at iteration 0: the heads then spend the fine-tuning repairing what the new modules
disturbed. Every aggregation instead ends in

    out = reference + gamma * (aggregated - reference)

with ``reference`` what the single-frame detector (or the method's static counterpart: SSN for
STSN, the transferred static feature for STMN, the key frame's own feature for a key-frame
memory, the propagated key feature for LSTS's non-key frames) computes, and ``gamma`` one
learned scale per channel that starts at zero: the ``gamma = 0`` start of ReZero / SkipInit and
of zero-initialised residual branches (Goyal et al. 2017), here on the papers' aggregations. The
module itself is left as its paper defines it, and training opens the gate where time helps.
``MODEL.VIDEO.IDENTITY_INIT False`` removes the gate (the papers' random starts).
"""

import torch
from torch import nn

__all__ = ["ResidualGate", "maybe_gate"]


class ResidualGate(nn.Module):
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
        if reference.shape != aggregated.shape:
            raise ValueError(
                f"ResidualGate: reference {tuple(reference.shape)} and aggregated "
                f"{tuple(aggregated.shape)} must have one shape"
            )
        return reference + self.gamma.view(-1, 1, 1) * (aggregated - reference)

    def extra_repr(self) -> str:
        return f"channels={self.gamma.numel()}"


def maybe_gate(identity_init: bool, channels: int):
    """A :class:`ResidualGate` of ``channels`` with ``MODEL.VIDEO.IDENTITY_INIT``, else None."""
    return ResidualGate(channels) if identity_init else None
