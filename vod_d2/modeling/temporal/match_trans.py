"""
MatchTrans as the STMN authors implemented it (``fanyix/STMN``, ``modules/MatchTrans.lua`` and
its CUDA kernel ``modules/assemble/assemble.cu``), on the ops of :mod:`vod_d2.layers`.

The paper (§3.3) writes the transformation coefficients as raw dot products divided by their
sum over the window, which :class:`vod_d2.layers.MatchTransAlign` computes
(``MODEL.STMN.MATCHTRANS.NORMALIZATION: "sum"``). The authors' code differs in four ways, all
kept here (``NORMALIZATION: "cosine"``):

1. the affinities are cosine similarities, ``F_t(x) . F_{t-1}(x + d) / (|F_t(x)| |F_{t-1}(x + d)|)``
   (each norm plus 1e-8), so a neighbour is chosen by the direction of its feature, not by its
   magnitude;
2. affinities <= 0 are set to zero;
3. the rest are divided by their sum over the window (the positive mass);
4. where that mass is about zero (below 1e-7: ``F_t(x)`` is a zero vector, or no neighbour is
   similar), the memory is copied, ``M'_{t-1}(x) = M_{t-1}(x)``, instead of being erased;

and the coefficients carry no gradient: the kernel's backward pass returns zero for both
feature maps, so MatchTrans trains nothing upstream, only the memory it moves gets gradients.
"""

import torch
from torch import nn

from ...layers import MatchTransAlign, local_aggregate, local_correlation

__all__ = ["MATCHTRANS_NORMALIZATIONS", "PositiveCosineMatchTrans", "build_match_trans"]

#: ``MODEL.STMN.MATCHTRANS.NORMALIZATION`` values: those of MatchTransAlign and the authors'.
MATCHTRANS_NORMALIZATIONS = ("sum", "softmax", "cosine")


class PositiveCosineMatchTrans(nn.Module):
    """
    Align a memory map of frame t-1 to frame t as the STMN authors' code does (see the module
    docstring): ``M'_{t-1}(x) = sum_d Gamma_x(d) M_{t-1}(x + d)`` over the (2k+1)^2 window, with
    Gamma the positive cosine affinities normalised by their sum, or the identity where they
    sum to about zero. Same interface as :class:`vod_d2.layers.MatchTransAlign`.
    """

    #: The authors' constants: added to every norm, and the mass below which Gamma is identity.
    NORM_EPS = 1e-8
    MASS_EPS = 1e-7

    def __init__(self, k: int = 2):
        """
        Args:
            k: window radius; the paper uses k = 2 (a 5 x 5 window).
        """
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"PositiveCosineMatchTrans: k must be an int >= 0, got {k!r}")
        self.k = k

    @torch.no_grad()
    def transform_coefficients(
        self, features: torch.Tensor, prev_features: torch.Tensor
    ) -> torch.Tensor:
        """
        Gamma, without gradient.

        Args:
            features (Tensor): (N, C, H, W) F_t.
            prev_features (Tensor): (N, C, H, W) F_{t-1}.

        Returns:
            Tensor: (N, (2k + 1)^2, H, W) window weights in the displacement order of
            :func:`vod_d2.layers.local_correlation`; at every location they sum to one, and a
            location of about zero mass has weight 1 on displacement (0, 0).
        """
        unit = features / (features.norm(dim=1, keepdim=True) + self.NORM_EPS)
        prev_unit = prev_features / (prev_features.norm(dim=1, keepdim=True) + self.NORM_EPS)
        # Out-of-map neighbours are zero vectors (zero padding): cosine 0, no mass.
        affinity = local_correlation(unit, prev_unit, self.k).clamp(min=0)
        mass = affinity.sum(dim=1, keepdim=True)
        empty = mass < self.MASS_EPS
        identity = torch.zeros_like(affinity)
        identity[:, affinity.shape[1] // 2] = 1.0
        return torch.where(empty, identity, affinity / torch.where(empty, 1.0, mass))

    def forward(
        self, features: torch.Tensor, prev_features: torch.Tensor, prev_memory: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            features (Tensor): (N, C, H, W) features of the current frame, F_t.
            prev_features (Tensor): (N, C, H, W) features of the previous frame, F_{t-1}.
            prev_memory (Tensor): (N, C_m, H, W) memory of the previous frame, M_{t-1}.

        Returns:
            Tensor: (N, C_m, H, W) memory aligned to frame t, M'_{t-1} (differentiable in
            ``prev_memory`` only).
        """
        gamma = self.transform_coefficients(features, prev_features)
        return local_aggregate(gamma.to(prev_memory.dtype), prev_memory, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def build_match_trans(k: int, normalization: str) -> nn.Module:
    """
    The aligner of ``MODEL.STMN.MATCHTRANS``: :class:`PositiveCosineMatchTrans` for
    ``"cosine"``, :class:`vod_d2.layers.MatchTransAlign` for ``"sum"`` (the paper's equation) and
    ``"softmax"``. Both have ``k``, ``transform_coefficients(features, prev_features)`` and
    ``forward(features, prev_features, memory) = local_aggregate(Gamma, memory, k)``.
    """
    if normalization not in MATCHTRANS_NORMALIZATIONS:
        raise ValueError(
            f"MODEL.STMN.MATCHTRANS.NORMALIZATION={normalization!r} is not one of "
            f"{MATCHTRANS_NORMALIZATIONS}"
        )
    if normalization == "cosine":
        return PositiveCosineMatchTrans(k)
    return MatchTransAlign(k, normalization)
