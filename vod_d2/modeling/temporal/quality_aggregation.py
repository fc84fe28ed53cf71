"""
The quality-aware aggregation unit shared by Impression Network (§3.3, Eq. 2-3) and LSTS (§3.3
Eq. 7, §3.4 Eq. 8, §4.2): a tiny FCN scores every input feature at every position, a softmax
over the inputs turns the scores into weights, and the output is the weighted sum.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from fvcore.nn import weight_init
from torch import nn

__all__ = ["QualityNet", "QualityAwareAggregation"]


class QualityNet(nn.Module):
    """
    N_q of both papers: three convs giving a raw, position-wise quality score of a feature map
    (randomly initialised, learned from the task loss alone). The papers' text: 3x3x256, ReLU,
    1x1x16, ReLU, 1x1x1 (the default); the LSTS authors' code: 1x1x256, 3x3x16, 3x3x1 without
    activations (``kernel_sizes=(1, 3, 3), activation=False``).

    With ``zero_init`` the last conv starts at zero, so every input scores 0 and the softmax
    over them starts at equal weights (Impression Table 1 (c)'s fixed 0.5): MSRA weights on raw
    features start it saturated instead (one input weighted below 0.1 at most positions).
    """

    def __init__(
        self,
        in_channels: int,
        dims: Sequence[int] = (256, 16),
        kernel_sizes: Sequence[int] = (3, 1, 1),
        activation: bool = True,
        zero_init: bool = False,
    ):
        """
        Args:
            in_channels: channels C of the scored features.
            dims: widths of the first two convs (the papers: 256, 16).
            kernel_sizes: kernels of the three convs (odd).
            activation: ReLU after the first two convs.
            zero_init: start the last conv at zero (equal weights); False: MSRA (the papers).
        """
        super().__init__()
        if len(dims) != 2 or len(kernel_sizes) != 3 or any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(
                f"QualityNet needs two widths and three odd kernels, got {tuple(dims)} and "
                f"{tuple(kernel_sizes)}"
            )
        widths = (in_channels, *dims, 1)
        self.convs = nn.ModuleList(
            Conv2d(widths[i], widths[i + 1], k, padding=k // 2) for i, k in enumerate(kernel_sizes)
        )
        self.activation = activation
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)
        if zero_init:
            nn.init.zeros_(self.convs[-1].weight)
            nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C, H, W) features.

        Returns:
            Tensor: (N, 1, H, W) raw scores.
        """
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.activation and i < len(self.convs) - 1:
                x = F.relu(x)
        return x


class QualityAwareAggregation(nn.Module):
    """
    Fuses K aligned feature maps of one frame position by position:
    ``sum_k softmax_k(N_q(f_k)) * f_k`` (Impression Eq. 2-3; LSTS Eq. 7-8). One N_q scores every
    input, so the weights compare the inputs' qualities on one scale. With ``quality=False``
    every input gets the fixed weight 1/K (the papers' "fixed 0.5" ablations: Impression
    Table 1 (c), LSTS Table 2).
    """

    def __init__(self, in_channels: int, quality: bool = True, **quality_net):
        """
        Args:
            in_channels: channels C of the fused features.
            quality: learn position-wise weights with N_q; False: equal weights.
            quality_net: arguments of :class:`QualityNet` (its layout).
        """
        super().__init__()
        self.quality_net = QualityNet(in_channels, **quality_net) if quality else None

    def weights(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: K tensors (N, C, H, W).

        Returns:
            Tensor: (K, N, 1, H, W) weights, summing to one over dim 0 at every position.
        """
        if not features:
            raise ValueError("QualityAwareAggregation needs at least one feature map")
        shapes = {tuple(f.shape) for f in features}
        if len(shapes) != 1:
            raise ValueError(f"QualityAwareAggregation fuses maps of one shape, got {shapes}")
        first = features[0]
        if self.quality_net is None:
            return first.new_full((len(features), first.shape[0], 1, *first.shape[2:]),
                                  1.0 / len(features))  # fmt: skip
        scores = self.quality_net(torch.cat(list(features))).unflatten(0, (len(features), -1))
        return scores.softmax(dim=0)

    def forward(self, features: Sequence[torch.Tensor], return_weights: bool = False):
        """
        Args:
            features: K tensors (N, C, H, W), aligned to the same frame.
            return_weights: also return the (K, N, 1, H, W) weights.

        Returns:
            Tensor: (N, C, H, W) the fused feature (and the weights).
        """
        weights = self.weights(features)
        fused = (weights * torch.stack(list(features))).sum(dim=0)
        return (fused, weights) if return_weights else fused

    def extra_repr(self) -> str:
        return f"quality={self.quality_net is not None}"
