"""
Position-sensitive RoI pooling of R-FCN, plain or deformable, and the deformable offset branch.

Score maps have ``G k^2`` channels: channel ``g k^2 + i k + j`` is the map of output ``g`` (a
class score, a box coordinate) for bin (i, j) of a k x k grid over each RoI, and bin (i, j)
is pooled from that map only. The plain pooling is ``torchvision.ops.ps_roi_align``;
deformable PS RoI pooling (Dai et al. 2017, §2.2) shifts each bin by a learned offset, a
fraction of the RoI's width and height scaled by gamma (``vod_d2.layers.deform_ps_roi_pool``;
zero offsets give ``ps_roi_align`` exactly).
"""

from typing import Optional

import torch
from detectron2.layers import Conv2d
from torch import nn
from torchvision.ops import ps_roi_align

from ...layers import deform_ps_roi_pool

__all__ = ["position_sensitive_pool", "PSRoIOffsets"]


def position_sensitive_pool(
    score_maps: torch.Tensor,
    rois: torch.Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    offsets: Optional[torch.Tensor] = None,
    gamma: float = 0.1,
) -> torch.Tensor:
    """
    Args:
        score_maps (Tensor): (N, G k^2, H, W) position-sensitive score maps, k = output_size.
        rois (Tensor): (R, 5) batch index and (x0, y0, x1, y1) in image coordinates.
        output_size: k.
        spatial_scale: map size over image size (1 / stride).
        sampling_ratio: bilinear samples per bin side; <= 0 adapts it to the bin's size.
        offsets (Tensor or None): (R, G', 2, k, k) normalised (x, y) offsets of every bin, one
            set for each of G' groups of G / G' consecutive outputs; None pools without.
        gamma: scale of the normalised offsets.

    Returns:
        Tensor: (R, G, k, k), bin (i, j) of output g pooled from map ``g k^2 + i k + j``.
    """
    if offsets is None:
        return ps_roi_align(score_maps, rois, output_size, spatial_scale, sampling_ratio)
    num_rois, groups = offsets.shape[:2]
    num_images, channels, height, width = score_maps.shape
    if channels % (groups * output_size * output_size):
        raise ValueError(
            f"{groups} offset groups of {output_size}x{output_size} bins do not divide the "
            f"{channels} score maps"
        )
    # The op takes one set of offsets per RoI: each group of outputs becomes an image of its
    # own (a view: a group's maps are consecutive channels) and each RoI one RoI per group.
    maps = score_maps.reshape(num_images * groups, channels // groups, height, width)
    folded = rois.repeat_interleave(groups, dim=0)
    group = torch.arange(groups, device=rois.device, dtype=rois.dtype).repeat(num_rois)
    folded[:, 0] = folded[:, 0] * groups + group
    pooled = deform_ps_roi_pool(
        maps,
        folded,
        offsets.reshape(num_rois * groups, *offsets.shape[2:]),
        output_size,
        spatial_scale,
        sampling_ratio,
        trans_std=gamma,
    )
    return pooled.reshape(num_rois, -1, output_size, output_size)


class PSRoIOffsets(nn.Module):
    """
    The offset branch of deformable PS RoI pooling (Dai et al. 2017, §2.2, and the authors'
    code): a 1x1 conv maps the features to ``2 k^2`` offset fields for each of ``groups``
    groups of outputs, and plain position-sensitive RoIAlign of those fields gives each RoI's
    normalised offsets, bin by bin. The conv starts at zero, so a new deformable head pools
    exactly as plain R-FCN.
    """

    def __init__(
        self,
        in_channels: int,
        groups: int,
        *,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int = 0,
    ):
        """
        Args:
            in_channels: channels of the features the offsets are predicted from.
            groups: output groups with offsets of their own (R-FCN: one per class; one for
                the box).
            output_size, spatial_scale, sampling_ratio: as in :func:`position_sensitive_pool`.
        """
        super().__init__()
        self.groups = groups
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.conv = Conv2d(in_channels, groups * 2 * output_size * output_size, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C, H, W) features.
            rois (Tensor): (R, 5) batch index and (x0, y0, x1, y1) in image coordinates.

        Returns:
            Tensor: (R, groups, 2, k, k) normalised (x, y) offsets of each bin.
        """
        pooled = position_sensitive_pool(
            self.conv(x), rois, self.output_size, self.spatial_scale, self.sampling_ratio
        )
        k = self.output_size
        return pooled.view(len(rois), self.groups, 2, k, k)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, output_size={self.output_size}"
