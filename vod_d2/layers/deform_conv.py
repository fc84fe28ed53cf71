"""
Deformable convolution (Dai et al. 2017) and its modulated form (Zhu et al. 2019, DCNv2) with
detectron2's parameters, computed by ``torchvision.ops.deform_conv2d``.

detectron2's ``DeformConv`` and ``ModulatedDeformConv`` run on CUDA only (on the CPU they raise
``NotImplementedError``); torchvision's op has CPU and CUDA kernels, with convolution groups and
offset groups. :class:`DeformConv` keeps detectron2's parameter names and shapes (``weight``
(C_out, C_in / groups, kh, kw), ``bias``, the ``norm`` module), so checkpoints load unchanged,
and detectron2's call signature, so :class:`DeformBottleneckBlock` calls it as its own.

The offsets have the layout of both ops: channel ``2 (g kh kw + k)`` is the vertical shift (dy)
and ``2 (g kh kw + k) + 1`` the horizontal one (dx) of kernel point ``k`` (row-major) of offset
group ``g``; the modulation mask has one channel per kernel point and group, in the same order.
A sample outside the input reads zero (bilinear with zero padding).
"""

from typing import Optional

import torch
from detectron2.layers.deform_conv import DeformConv as D2DeformConv
from detectron2.layers.deform_conv import ModulatedDeformConv as D2ModulatedDeformConv
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "use_torchvision_deform_convs"]


class DeformConv(nn.Module):
    """
    A deformable 3x3 (or any size) convolution with detectron2's parameters, on any device
    torchvision's ``deform_conv2d`` supports (CPU, CUDA).

    Attributes:
        weight (Parameter): (C_out, C_in / groups, kh, kw).
        bias (Parameter or None): (C_out,).
        norm (nn.Module or None): applied after the convolution, then ``activation``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        """
        Args:
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
                for ``nn.Conv2d``.
            deformable_groups: offset groups: the input channels are split into this many
                groups, each sampled at its own offsets.
            norm: a normalisation layer after the convolution.
            activation: a callable after the normalisation.
        """
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DeformConv: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if in_channels % deformable_groups:
            raise ValueError(
                f"DeformConv: deformable_groups={deformable_groups} must divide "
                f"in_channels={in_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    @classmethod
    def from_detectron2(cls, layer: nn.Module) -> "DeformConv":
        """
        The layer computing what a detectron2 ``DeformConv`` or ``ModulatedDeformConv`` does,
        holding its very parameters and norm (so a frozen layer stays frozen).
        """
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            deformable_groups=layer.deformable_groups,
            norm=layer.norm,
            activation=layer.activation,
        )
        new.weight = layer.weight
        new.bias = layer.bias
        return new

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C_in, H, W) input.
            offset (Tensor): (N, 2 G kh kw, H_out, W_out) sampling offsets (dy, dx) of each
                kernel point of each of the G offset groups (the module docstring's layout).
            mask (Tensor or None): (N, G kh kw, H_out, W_out) modulation of each sample
                (DCNv2, after its sigmoid); None for DCNv1.

        Returns:
            Tensor: (N, C_out, H_out, W_out).
        """
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )


def use_torchvision_deform_convs(module: nn.Module) -> nn.Module:
    """
    Replace, in place, every detectron2 ``DeformConv`` / ``ModulatedDeformConv`` inside
    ``module`` (e.g. a ResNet with ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``) by a
    :class:`DeformConv` holding the same parameters, under the same name: the state dict is
    unchanged, and the module now runs on the CPU too.

    Returns:
        nn.Module: ``module``.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (D2DeformConv, D2ModulatedDeformConv)):
                setattr(parent, name, DeformConv.from_detectron2(child))
    return module
