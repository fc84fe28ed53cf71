"""
torchvision's deformable convolution, with the checks its kernels leave out.

``torchvision.ops.deform_conv2d`` samples its input bilinearly at ``p0 + p_k + offset``. Its
kernels (CPU and CUDA) skip a sampling location only when a test written as
``h <= -1 || height <= h || w <= -1 || width <= w`` says it lies outside the map. Every
comparison with NaN is false, so a NaN offset passes the test; ``floor(NaN)`` then becomes
``INT_MIN`` as an int, and the kernel reads ``input[INT_MIN * width + ...]``, far outside the
tensor: a segmentation fault, or garbage read from whatever memory is mapped there. (Infinite
offsets are safe: they fail the test and sample zero.) A model whose features have diverged to
inf or NaN predicts NaN offsets, so this is how a diverged STSN ends, unless the offsets are
checked first: :func:`check_deform_conv2d_inputs` turns them, and the shapes torchvision would
reject with a message from deep inside its kernel, into one-line Python errors.
"""

from typing import Optional, Tuple

import torch
import torchvision

__all__ = ["DeformConv2d", "check_deform_conv2d_inputs"]


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


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
            outside ``input``; they mean the model has diverged.
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
