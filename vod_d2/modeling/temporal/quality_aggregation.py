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
    N_q of both papers: 3x3x256 conv, ReLU, 1x1x16 conv, ReLU, 1x1x1 conv; a raw, position-wise
    quality score of a feature map (randomly initialised, learned from the task loss alone).
    """

    def __init__(self, in_channels: int, dims: Sequence[int] = (256, 16)):
        """
        Args:
            in_channels: channels C of the scored features.
            dims: widths of the 3x3 and the first 1x1 conv (the papers: 256, 16).
        """
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"QualityNet needs two widths (3x3 conv, 1x1 conv), got {dims}")
        self.convs = nn.ModuleList(
            [
                Conv2d(in_channels, dims[0], 3, padding=1),
                Conv2d(dims[0], dims[1], 1),
                Conv2d(dims[1], 1, 1),
            ]
        )
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C, H, W) features.

        Returns:
            Tensor: (N, 1, H, W) raw scores.
        """
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
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

    def __init__(self, in_channels: int, quality: bool = True, dims: Sequence[int] = (256, 16)):
        """
        Args:
            in_channels: channels C of the fused features.
            quality: learn position-wise weights with N_q; False: equal weights.
            dims: widths of N_q's first two convs.
        """
        super().__init__()
        self.quality_net = QualityNet(in_channels, dims) if quality else None

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
