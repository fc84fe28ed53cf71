"""Deformable position-sensitive RoI pooling (Dai et al., ICCV 2017, Sec. 2.2; R-FCN head of STSN).

Position-sensitive RoIAlign (``torchvision.ops.ps_roi_align``) whose k x k bins are each shifted
by a learned offset normalised by the RoI's size. For RoI r with box (x1, y1, x2, y2) in image
coordinates and bin (i, j) (row i, column j):

* the box on the map is (x1, y1, x2, y2) * spatial_scale - 0.5 (torchvision's aligned
  convention), of width w and height h, and the bin starts at
  (x1 * spatial_scale - 0.5 + j * w / k, y1 * spatial_scale - 0.5 + i * h / k);
* the bin is moved by (trans_std * dx_rij * w, trans_std * dy_rij * h) (the paper's
  gamma * Delta p_ij o (w, h), gamma = trans_std = 0.1);
* out[r, c, i, j] is the mean of g x g' bilinear samples at the centres of a regular grid over
  the (moved) bin, read from input channel c * k * k + i * k + j of image rois[r, 0]: bin (i, j)
  reads channel group i * k + j of the k * k channels of output channel c (torchvision's layout).

The sampling grid is sampling_ratio x sampling_ratio, or ceil(h / k) x ceil(w / k) when
sampling_ratio <= 0, and the bilinear rule is torchvision's: a sample with y < -1, y > H, x < -1
or x > W reads zero, one in between is clamped to the map. With zero offsets the op is therefore
exactly ``ps_roi_align`` (the same floating point operations in the same order). Within the
clamped borders the gradient with respect to the offsets is zero.

Offsets are ``(R, 2, k, k)`` in **(dx, dy)** order, channel 0 the horizontal shift in units of
trans_std * RoI width, channel 1 the vertical one in units of trans_std * RoI height: the layout of
the ``trans`` input of the authors' MXNet ``DeformablePSROIPooling`` (class-agnostic offsets), so
their offset branches convert without a channel swap. (The project's ``deform_sampling`` op takes
(dy, dx): the two follow their respective authors.)

The reference loops over the sample grid and gathers the four corners of every sample for all
RoIs, channels and bins at once; the compiled op never holds more than the output.
"""

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from vod_d2.layers import _ext

_OP = "deform_ps_roi_pool"


def _check_inputs(input, rois, offsets, output_size, spatial_scale, sampling_ratio, trans_std):
    for name, t in (("input", input), ("rois", rois)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: {name} must be a Tensor, got {type(t).__name__}")
    if offsets is not None and not isinstance(offsets, torch.Tensor):
        raise TypeError(f"{_OP}: offsets must be a Tensor or None, got {type(offsets).__name__}")
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"{_OP}: output_size must be an int >= 1, got {output_size!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ValueError(f"{_OP}: sampling_ratio must be an int, got {sampling_ratio!r}")
    for name, value in (("spatial_scale", spatial_scale), ("trans_std", trans_std)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{_OP}: {name} must be a finite number, got {value!r}")
    if spatial_scale <= 0:
        raise ValueError(f"{_OP}: spatial_scale must be > 0, got {spatial_scale}")
    if input.dim() != 4 or not input.is_floating_point():
        raise ValueError(
            f"{_OP}: input must be a floating point (N, C, H, W) tensor, got {input.dtype} "
            f"{tuple(input.shape)}"
        )
    bins = output_size * output_size
    if input.shape[1] % bins:
        raise ValueError(
            f"{_OP}: input channels {input.shape[1]} must be a multiple of output_size^2 = {bins} "
            f"(C_out groups of k x k position-sensitive maps), got input {tuple(input.shape)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"{_OP}: rois must be (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(rois.shape)}"
        )
    expected = (rois.shape[0], 2, output_size, output_size)
    if offsets is not None and tuple(offsets.shape) != expected:
        raise ValueError(
            f"{_OP}: offsets must be (R, 2, k, k) = {expected} (dx, dy per bin), got "
            f"{tuple(offsets.shape)}"
        )
    tensors = {"input": input, "rois": rois}
    if offsets is not None:
        tensors["offsets"] = offsets
    if len({t.dtype for t in tensors.values()}) != 1:
        raise TypeError(
            f"{_OP}: {', '.join(tensors)} must share one dtype, got "
            f"{', '.join(str(t.dtype) for t in tensors.values())}"
        )
    if len({t.device for t in tensors.values()}) != 1:
        raise ValueError(
            f"{_OP}: {', '.join(tensors)} must be on one device, got "
            f"{', '.join(str(t.device) for t in tensors.values())}"
        )


def _check_batch_index(rois, num_images):
    batch = rois[:, 0].long()
    if batch.numel() and (batch.min() < 0 or batch.max() >= num_images):
        raise ValueError(
            f"{_OP}: rois[:, 0] must hold image indices in [0, {num_images}), got "
            f"[{int(batch.min())}, {int(batch.max())}]"
        )


@_ext.register_fake("deform_ps_roi_pool_forward")
def _forward_fake(input, rois, offsets, spatial_scale, output_size, sampling_ratio, trans_std):
    channels_out = input.shape[1] // (output_size * output_size)
    return input.new_empty(rois.shape[0], channels_out, output_size, output_size)


@_ext.register_fake("deform_ps_roi_pool_backward")
def _backward_fake(
    grad, input, rois, offsets, spatial_scale, output_size, sampling_ratio, trans_std
):
    return input.new_empty(input.shape), input.new_empty(rois.shape[0], 2, output_size, output_size)


class _DeformPSRoIPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, offsets, output_size, spatial_scale, sampling_ratio, trans_std):
        ctx.save_for_backward(input, rois, offsets)
        ctx.settings = (spatial_scale, output_size, sampling_ratio, trans_std)
        return torch.ops.vod_d2.deform_ps_roi_pool_forward(
            input, rois, offsets, spatial_scale, output_size, sampling_ratio, trans_std
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        input, rois, offsets = ctx.saved_tensors
        grad_input, grad_offsets = torch.ops.vod_d2.deform_ps_roi_pool_backward(
            grad, input, rois, offsets, *ctx.settings
        )
        return grad_input, None, None if offsets is None else grad_offsets, None, None, None, None


def _bilinear(flat_input, planes, y, x, height, width):
    """torchvision's RoIAlign bilinear rule at (y, x), differentiable in y and x.

    Args:
        flat_input (Tensor): (N * C * H * W,) the input, flattened.
        planes (Tensor): (R, C_out, k, k) int64 index n * C + c_in of the plane each output reads.
        y (Tensor): (R, 1, k, k) sample rows, x (Tensor): (R, 1, k, k) sample columns.

    Returns:
        Tensor: (R, C_out, k, k) samples; zero outside [-1, H] x [-1, W].
    """
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    corners = []
    for t, size in ((y, height), (x, width)):
        # As the C++ rule: t <= 0 -> 0; t beyond the last cell -> the last cell (weight 1).
        t = torch.where(inside & (t > 0), t, torch.zeros_like(t))
        low = t.floor()
        last = low >= size - 1
        low = torch.where(last, torch.full_like(low, size - 1), low)
        t = torch.where(last, low, t)
        high = torch.where(last, low, low + 1)
        frac = t - low
        corners.append((low.long(), high.long(), frac, 1 - frac))
    (y_low, y_high, ly, hy), (x_low, x_high, lx, hx) = corners
    rows = planes * height
    value = 0
    for yy, xx, weight in (
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    ):
        value = value + weight * flat_input[(rows + yy) * width + xx]
    return torch.where(inside, value, torch.zeros_like(value))


def deform_ps_roi_pool_reference(
    input, rois, offsets, output_size, spatial_scale, sampling_ratio=-1, trans_std=0.1
):
    """Pure-PyTorch :func:`deform_ps_roi_pool` (same arguments and result).

    Differentiable by autograd in the input and the offsets. Holds the four corner gathers of one
    sample of every bin at a time (plus autograd's copies of them when gradients are needed).
    """
    _check_inputs(input, rois, offsets, output_size, spatial_scale, sampling_ratio, trans_std)
    _check_batch_index(rois, input.shape[0])
    k = output_size
    n, channels, height, width = input.shape
    c_out = channels // (k * k)
    num_rois = rois.shape[0]
    dtype = input.dtype
    # The kernels' arithmetic, operation by operation (scalars cast to the input dtype first), so
    # that zero offsets reproduce torchvision's ps_roi_align bit for bit.
    scale = torch.tensor(spatial_scale, dtype=dtype, device=input.device)
    batch = rois[:, 0].long()
    start_w = rois[:, 1] * scale - 0.5
    start_h = rois[:, 2] * scale - 0.5
    roi_w = rois[:, 3] * scale - 0.5 - start_w
    roi_h = rois[:, 4] * scale - 0.5 - start_h
    bin_w, bin_h = roi_w / k, roi_h / k
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio)
        grid_w = torch.full_like(roi_w, sampling_ratio)
    else:
        grid_h, grid_w = (roi_h / k).ceil(), (roi_w / k).ceil()
    steps = torch.arange(k, dtype=dtype, device=input.device)
    hstart = (steps * bin_h[:, None] + start_h[:, None])[:, :, None].expand(-1, -1, k)
    wstart = (steps * bin_w[:, None] + start_w[:, None])[:, None, :].expand(-1, k, -1)
    if offsets is not None:
        gamma = torch.tensor(trans_std, dtype=dtype, device=input.device)
        wstart = wstart + offsets[:, 0] * gamma * roi_w[:, None, None]
        hstart = hstart + offsets[:, 1] * gamma * roi_h[:, None, None]
    hstart, wstart = hstart[:, None], wstart[:, None]  # (R, 1, k, k), broadcast over channels
    # Input plane of output (r, c, i, j): image rois[r, 0], channel c * k * k + i * k + j.
    channel = torch.arange(channels, device=input.device).view(1, c_out, k, k)
    planes = batch.view(-1, 1, 1, 1) * channels + channel
    flat_input = input.reshape(-1)
    # An empty RoI set still runs one (empty) sample, so the output stays in the graph.
    samples_h = int(grid_h.max()) if num_rois else 1
    samples_w = int(grid_w.max()) if num_rois else 1
    grid_h4, grid_w4 = grid_h.view(-1, 1, 1, 1), grid_w.view(-1, 1, 1, 1)
    out = input.new_zeros(num_rois, c_out, k, k)
    for iy in range(max(samples_h, 0)):
        y = hstart + (iy + 0.5) * bin_h.view(-1, 1, 1, 1) / grid_h4
        for ix in range(max(samples_w, 0)):
            x = wstart + (ix + 0.5) * bin_w.view(-1, 1, 1, 1) / grid_w4
            value = _bilinear(flat_input, planes, y, x, height, width)
            # RoIs with a smaller grid than the largest skip the extra samples (a sum of zeros).
            used = (iy < grid_h4) & (ix < grid_w4)
            out = out + torch.where(used, value, torch.zeros_like(value))
    return out / (grid_h4 * grid_w4)


def deform_ps_roi_pool(
    input, rois, offsets, output_size, spatial_scale, sampling_ratio=-1, trans_std=0.1
):
    """Deformable position-sensitive RoI pooling (Dai et al. 2017, Eq. 4 with R-FCN's layout).

    Runs the compiled op when available for the inputs' device, else
    :func:`deform_ps_roi_pool_reference` (same semantics, one warning). The CPU kernel and the
    reference refuse RoIs whose image index is not in [0, N); the CUDA kernel, which does not
    synchronise to check, gives them zero output and gradient.

    Args:
        input (Tensor): (N, C_out * k * k, H, W) position-sensitive score maps; output channel c,
            bin (i, j) reads channel c * k * k + i * k + j.
        rois (Tensor): (R, 5) RoIs [batch_index, x1, y1, x2, y2] in image coordinates, same dtype
            as the input.
        offsets (Tensor or None): (R, 2, k, k) normalised bin offsets (dx, dy) (the offset
            branch's output), same dtype as the input; None means zero offsets (plain
            ``torchvision.ops.ps_roi_align``).
        output_size (int): k, the number of bins per side (the papers use 7).
        spatial_scale (float): map cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio (int): samples per bin side; <= 0 takes ceil(RoI size / k) on the map.
        trans_std (float): gamma, the scale of the offsets (0.1 in the papers).

    Returns:
        Tensor: (R, C_out, k, k) pooled scores.
    """
    _check_inputs(input, rois, offsets, output_size, spatial_scale, sampling_ratio, trans_std)
    if not _ext.use_kernel(_OP, input.device):
        return deform_ps_roi_pool_reference(
            input, rois, offsets, output_size, spatial_scale, sampling_ratio, trans_std
        )
    return _DeformPSRoIPool.apply(
        input, rois, offsets, output_size, float(spatial_scale), sampling_ratio, float(trans_std)
    )


class DeformPSRoIPool(nn.Module):
    """Deformable position-sensitive RoI pooling: :func:`deform_ps_roi_pool` with fixed settings.

    The offsets come from the caller (deformable R-FCN's offset branch: an FC layer on a first,
    offset-free pooling of the RoI); without them the module is ``ps_roi_align``.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio=-1, trans_std=0.1):
        """
        Args:
            output_size (int): k, bins per side.
            spatial_scale (float): map cells per image pixel.
            sampling_ratio (int): samples per bin side, <= 0 for adaptive.
            trans_std (float): gamma, the scale of the normalised offsets.
        """
        super().__init__()
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
            raise ValueError(
                f"DeformPSRoIPool: output_size must be an int >= 1, got {output_size!r}"
            )
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.trans_std = trans_std

    def forward(self, input, rois, offsets=None):
        """
        Args:
            input (Tensor): (N, C_out * k * k, H, W) position-sensitive maps.
            rois (Tensor): (R, 5) [batch_index, x1, y1, x2, y2] in image coordinates.
            offsets (Tensor, optional): (R, 2, k, k) normalised (dx, dy) bin offsets.

        Returns:
            Tensor: (R, C_out, k, k) pooled scores.
        """
        return deform_ps_roi_pool(
            input,
            rois,
            offsets,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.trans_std,
        )

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, trans_std={self.trans_std}"
        )
