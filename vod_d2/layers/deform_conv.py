"""
Deformable convolution (Dai et al. 2017) and its modulated form (Zhu et al. 2019, DCNv2) on
``torchvision.ops.deform_conv2d``, with the checks its kernels leave out.

* :class:`DeformConv2d` is torchvision's layer (its parameters and state dict), used by STSN's
  sampling block.
* :class:`DeformConv` has detectron2's parameter names and shapes (``weight`` (C_out,
  C_in / groups, kh, kw), ``bias``, the ``norm`` module) and call signature, so detectron2's
  ``DeformBottleneckBlock`` runs it as its own and checkpoints load unchanged:
  :func:`use_torchvision_deform_convs` puts it in place of detectron2's ``DeformConv`` and
  ``ModulatedDeformConv``, which run on CUDA only (on the CPU they raise
  ``NotImplementedError``); torchvision's op has CPU and CUDA kernels, with convolution groups
  and offset groups.

The offsets have the layout of both ops: channel ``2 (g kh kw + k)`` is the vertical shift (dy)
and ``2 (g kh kw + k) + 1`` the horizontal one (dx) of kernel point ``k`` (row-major) of offset
group ``g``; the modulation mask has one channel per kernel point and group, in the same order.
A sample outside the input reads zero (bilinear with zero padding).

**NaN offsets.** torchvision's kernels (CPU and CUDA) skip a sampling location only when a test
written as ``h <= -1 || height <= h || w <= -1 || width <= w`` says it lies outside the map.
Every comparison with NaN is false, so a NaN offset passes the test; ``floor(NaN)`` then becomes
``INT_MIN`` as an int, and the kernel reads ``input[INT_MIN * width + ...]``, far outside the
tensor: a segmentation fault, or garbage read from whatever memory is mapped there. (Infinite
offsets are safe: they fail the test and sample zero.) A model whose features have diverged to
inf or NaN predicts NaN offsets, so this is how a diverged STSN ends, unless the offsets are
checked first: :func:`check_deform_conv2d_inputs`, which both layers call, turns them, and the
shapes torchvision would reject with a message from deep inside its kernel, into one-line
Python errors.
"""

from typing import Optional

import torch
import torchvision
from detectron2.layers.deform_conv import DeformConv as D2DeformConv
from detectron2.layers.deform_conv import ModulatedDeformConv as D2ModulatedDeformConv
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = [
    "DeformConv",
    "DeformConv2d",
    "check_deform_conv2d_inputs",
    "use_torchvision_deform_convs",
]


def check_deform_conv2d_inputs(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    mask: Optional[torch.Tensor] = None,
):
    """
    Check the arguments of ``torchvision.ops.deform_conv2d`` before its kernel reads memory
    with them.

    Args:
        input (Tensor): (N, C_in, H, W) map to sample.
        offset (Tensor): (N, 2 * G * kh * kw, H_out, W_out) (dy, dx) offsets of G offset groups.
        weight (Tensor): (C_out, C_in / groups, kh, kw) convolution weights.
        stride, padding, dilation: as the convolution's (an int or a pair).
        mask (Tensor): optional (N, G * kh * kw, H_out, W_out) modulation.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit together.
        FloatingPointError: NaN offsets (or mask), which torchvision would turn into reads
            outside ``input``; they mean the model has diverged (checked in eager mode).
    """
    if input.dim() != 4 or offset.dim() != 4:
        raise ValueError(
            f"deform_conv2d: input {tuple(input.shape)} and offset {tuple(offset.shape)} must "
            "both be 4-D (N, C, H, W)"
        )
    if weight.dim() != 4 or input.shape[1] % weight.shape[1]:
        raise ValueError(
            f"deform_conv2d: weight {tuple(weight.shape)} must be (C_out, C_in / groups, kh, kw) "
            f"for input {tuple(input.shape)}"
        )
    kh, kw = weight.shape[-2:]
    out_hw = tuple(
        (size + 2 * p - (d * (k - 1) + 1)) // s + 1
        for size, k, s, p, d in zip(
            input.shape[-2:], (kh, kw), _pair(stride), _pair(padding), _pair(dilation)
        )
    )
    taps = 2 * kh * kw
    expected = f"({input.shape[0]}, 2 * G * {kh} * {kw}, {out_hw[0]}, {out_hw[1]})"
    if (
        offset.shape[0] != input.shape[0]
        or offset.shape[1] == 0
        or offset.shape[1] % taps
        or input.shape[1] % (offset.shape[1] // taps)
        or tuple(offset.shape[2:]) != out_hw
    ):
        raise ValueError(
            f"deform_conv2d: offset {tuple(offset.shape)} does not fit input "
            f"{tuple(input.shape)} and a {kh}x{kw} kernel: it must be {expected}, with G "
            f"dividing the {input.shape[1]} input channels"
        )
    tensors = {"input": input, "offset": offset, "weight": weight}
    if mask is not None:
        tensors["mask"] = mask
    if (
        len({t.dtype for t in tensors.values()}) > 1
        or len({t.device for t in tensors.values()}) > 1
    ):
        found = ", ".join(f"{k} {t.dtype} on {t.device}" for k, t in tensors.items())
        raise ValueError(f"deform_conv2d: all tensors need one dtype and device, got {found}")
    if torch.compiler.is_compiling():
        # A traced graph (torch.compile, torch.export) has no values to check: the check would
        # be a branch on data, which a graph cannot hold.
        return
    for name in ("offset", "mask"):
        values = tensors.get(name)
        if values is not None and bool(torch.isnan(values).any()):
            raise FloatingPointError(
                f"deform_conv2d: {int(torch.isnan(values).sum())} of {values.numel()} {name} "
                f"values are NaN (the input {tuple(input.shape)} has "
                f"{int((~torch.isfinite(input)).sum())} non-finite values): the model has "
                "diverged, and torchvision would read memory outside its input at NaN locations"
            )


class DeformConv2d(torchvision.ops.DeformConv2d):
    """
    ``torchvision.ops.DeformConv2d`` that checks its inputs first
    (:func:`check_deform_conv2d_inputs`): a diverged model raises ``FloatingPointError``
    instead of crashing the process. Parameters and state dict are torchvision's.
    """

    def forward(self, input, offset, mask=None):
        """
        Args:
            input (Tensor): (N, C_in, H, W) map to sample.
            offset (Tensor): (N, 2 * G * kh * kw, H_out, W_out) (dy, dx) offsets.
            mask (Tensor): optional (N, G * kh * kw, H_out, W_out) modulation.

        Returns:
            Tensor: (N, C_out, H_out, W_out).
        """
        check_deform_conv2d_inputs(
            input, offset, self.weight, self.stride, self.padding, self.dilation, mask
        )
        return super().forward(input, offset, mask)


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
        check_deform_conv2d_inputs(
            x, offset, self.weight, self.stride, self.padding, self.dilation, mask
        )
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
