"""Deformable sampling with similarity aggregation (LSTS, Sec. 3.2).

For each output position p0 and each of N sampling points, the location p_n = p0 + (dy_n, dx_n)
is sampled bilinearly (zero outside the map, Eq. 1) in a key and a value map; the similarity
s_n = <query(p0), key(p_n)> (Eq. 2, 5) is normalised over n and the output is
sum_n w_n * value(p_n) (Eq. 4). Gradients reach the offsets too (Eq. 6), so the sampling locations
can be learned.

Offsets are in **(dy, dx)** order (torchvision's ``deform_conv2d`` order, rows first), in feature
map cells, either shared by all positions, ``(N, 2)`` (LSTS's learnable locations), or per
position, ``(B, 2N, H, W)`` with channel ``2n`` holding dy_n and ``2n + 1`` holding dx_n. A location
with y <= -1, y >= H, x <= -1 or x >= W samples zero; corners outside the map contribute zero. At
integer locations the gradient with respect to the offsets is the one-sided one from above.

The LSTS authors' MXNet code (jiangzhengkai/LSTS, ``BilinearSampleK``) orders them **(dx, dy)**:
its learned locations, the ``(N, 2)`` parameter ``init_offset`` of a checkpoint, convert to this
op's offsets by swapping the two columns, ``init_offset[:, ::-1]`` (``.flip(1)`` on a tensor).

Offsets have the features' dtype, or float32 with float16 / bfloat16 features (mixed precision,
the module's float32 parameter under autocast): the gradient of shared offsets sums over all
B * H * W positions and would overflow half precision once the loss scale reaches ~65536, so it
is then accumulated and returned in float32.

The compiled kernel computes the (B, N, H, W) similarities and the weighted sum without ever
holding the (B, C, N, H, W) sampled features; the reference builds them.
"""

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from vod_d2.layers import _ext

NORMALIZATIONS = ("softmax", "sum")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_inputs(query, key, value, offsets, normalization):
    op = "deformable_similarity_sampling"
    for name, t in (("query", query), ("key", key), ("value", value), ("offsets", offsets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be (B, C, H, W), got shape {tuple(t.shape)}")
    if query.shape != key.shape:
        raise ValueError(
            f"{op}: query {tuple(query.shape)} and key {tuple(key.shape)} must have the same shape"
        )
    b, _, h, w = query.shape
    if value.shape[0] != b or value.shape[2:] != (h, w):
        raise ValueError(
            f"{op}: value {tuple(value.shape)} must share batch and spatial size with "
            f"query {tuple(query.shape)}"
        )
    shared = offsets.dim() == 2 and offsets.shape[1] == 2 and offsets.shape[0] > 0
    per_position = (
        offsets.dim() == 4
        and offsets.shape[1] > 0
        and offsets.shape[1] % 2 == 0
        and offsets.shape[0] == b
        and offsets.shape[2:] == (h, w)
    )
    if not (shared or per_position):
        raise ValueError(
            f"{op}: offsets must be (N, 2) or (B, 2N, H, W) = ({b}, 2N, {h}, {w}) with N >= 1, "
            f"got {tuple(offsets.shape)}"
        )
    float32_offsets = query.dtype in _LOW_PRECISION and offsets.dtype == torch.float32
    if len({query.dtype, key.dtype, value.dtype}) != 1 or not (
        offsets.dtype == query.dtype or float32_offsets
    ):
        raise TypeError(
            f"{op}: query, key, value and offsets must share one dtype (or float32 offsets with "
            f"float16 / bfloat16 features), got {query.dtype}, {key.dtype}, {value.dtype}, "
            f"{offsets.dtype}"
        )
    if len({query.device, key.device, value.device, offsets.device}) != 1:
        raise ValueError(
            f"{op}: query, key, value and offsets must be on one device, got {query.device}, "
            f"{key.device}, {value.device}, {offsets.device}"
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"{op}: normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
        )


def _normalize(similarity, normalization, eps):
    """Weights over the N points (dim 1): softmax, or the paper's s / sum(s) (Eq. 3)."""
    if normalization == "softmax":
        return similarity.softmax(dim=1)
    return similarity / (similarity.sum(dim=1, keepdim=True) + eps)


def _num_points(offsets):
    return offsets.shape[0] if offsets.dim() == 2 else offsets.shape[1] // 2


@_ext.register_fake("deform_similarity_forward")
def _similarity_fake(query, key, offsets):
    b, _, h, w = query.shape
    return query.new_empty(b, _num_points(offsets), h, w)


@_ext.register_fake("deform_similarity_backward")
def _similarity_backward_fake(grad_similarity, query, key, offsets):
    return query.new_empty(query.shape), key.new_empty(key.shape), offsets.new_empty(offsets.shape)


@_ext.register_fake("deform_aggregate_forward")
def _aggregate_fake(weights, value, offsets):
    return value.new_empty(value.shape)


@_ext.register_fake("deform_aggregate_backward")
def _aggregate_backward_fake(grad_output, weights, value, offsets):
    return (
        weights.new_empty(weights.shape),
        value.new_empty(value.shape),
        offsets.new_empty(offsets.shape),
    )


class _DeformSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, offsets):
        ctx.save_for_backward(query, key, offsets)
        return torch.ops.vod_d2.deform_similarity_forward(query, key, offsets)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_similarity):
        query, key, offsets = ctx.saved_tensors
        return torch.ops.vod_d2.deform_similarity_backward(grad_similarity, query, key, offsets)


class _DeformAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, value, offsets):
        ctx.save_for_backward(weights, value, offsets)
        return torch.ops.vod_d2.deform_aggregate_forward(weights, value, offsets)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        weights, value, offsets = ctx.saved_tensors
        return torch.ops.vod_d2.deform_aggregate_backward(grad_output, weights, value, offsets)


def deformable_similarity_sampling(query, key, value, offsets, normalization="softmax", eps=1e-6):
    """Aggregate ``value`` at N learned locations around each position, weighted by similarity.

    Runs the compiled kernel when available for the inputs' device, else
    :func:`deformable_similarity_sampling_reference` (same semantics, one warning).

    Args:
        query (Tensor): (B, C', H, W) embedding of the frame being predicted (g(F_{t+k})).
        key (Tensor): (B, C', H, W) embedding of the frame sampled from (f(F_t)).
        value (Tensor): (B, C, H, W) features aggregated (F_t).
        offsets (Tensor): (N, 2) shared or (B, 2N, H, W) per-position sampling offsets, in
            (dy, dx) order, in feature cells; the features' dtype, or float32 with float16 /
            bfloat16 features (their gradient is then float32).
        normalization (str): "softmax" over the N similarities, or "sum" for the paper's
            s_n / (sum_m s_m + eps) (Eq. 3; meant for non-negative similarities).
        eps (float): added to the denominator of the "sum" normalisation.

    Returns:
        Tensor: (B, C, H, W) aggregated features (F'_{t+k}, Eq. 4).
    """
    _check_inputs(query, key, value, offsets, normalization)
    if not _ext.use_kernel("deformable_similarity_sampling", query.device):
        return deformable_similarity_sampling_reference(
            query, key, value, offsets, normalization, eps
        )
    similarity = _DeformSimilarity.apply(query, key, offsets)
    weights = _normalize(similarity, normalization, eps)
    return _DeformAggregate.apply(weights, value, offsets)


def _sampling_locations(offsets, batch, height, width):
    """(B, N, H, W) row and column of every sampling location."""
    rows = torch.arange(height, dtype=offsets.dtype, device=offsets.device).view(1, 1, -1, 1)
    cols = torch.arange(width, dtype=offsets.dtype, device=offsets.device).view(1, 1, 1, -1)
    if offsets.dim() == 2:
        dy, dx = offsets[:, 0].view(1, -1, 1, 1), offsets[:, 1].view(1, -1, 1, 1)
    else:
        per_point = offsets.view(batch, -1, 2, height, width)
        dy, dx = per_point[:, :, 0], per_point[:, :, 1]
    y, x = rows + dy, cols + dx
    return y.expand(batch, -1, height, width), x.expand(batch, -1, height, width)


def bilinear_sample_reference(features, y, x):
    """Sample ``features`` bilinearly at (y, x), zero outside (Eq. 1), differentiable in y and x.

    Args:
        features (Tensor): (B, C, H, W) map.
        y (Tensor): (B, N, H', W') rows of the locations.
        x (Tensor): (B, N, H', W') columns of the locations.

    Returns:
        Tensor: (B, C, N, H', W') sampled features.
    """
    b, c, h, w = features.shape
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    flat = features.flatten(2)
    out = 0
    for cy, cx, weight in (
        (y0, x0, (1 - ly) * (1 - lx)),
        (y0, x0 + 1, (1 - ly) * lx),
        (y0 + 1, x0, ly * (1 - lx)),
        (y0 + 1, x0 + 1, ly * lx),
    ):
        valid = inside & (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        # Integer arithmetic: half precision cannot hold flat indices beyond 2048.
        zero = torch.zeros_like(cy)
        index = torch.where(valid, cy, zero).long() * w + torch.where(valid, cx, zero).long()
        gathered = flat.gather(2, index.flatten(1).unsqueeze(1).expand(b, c, -1))
        out = out + gathered.view(b, c, *y.shape[1:]) * (weight * valid).unsqueeze(1)
    return out


def deformable_similarity_sampling_reference(
    query, key, value, offsets, normalization="softmax", eps=1e-6
):
    """Pure-PyTorch :func:`deformable_similarity_sampling`: samples the N full maps, then reduces.

    Same arguments and result; needs (B, C, N, H, W) memory for the sampled values. With float32
    offsets and half-precision features it computes in float32 (as the kernel, which accumulates
    in float32 anyway) and returns the features' dtype.
    """
    _check_inputs(query, key, value, offsets, normalization)
    b, _, h, w = query.shape
    y, x = _sampling_locations(offsets, b, h, w)
    similarity = (query.unsqueeze(2) * bilinear_sample_reference(key, y, x)).sum(dim=1)
    weights = _normalize(similarity, normalization, eps)
    out = (weights.unsqueeze(1) * bilinear_sample_reference(value, y, x)).sum(dim=2)
    return out.to(value.dtype)


class DeformableSimilaritySampling(nn.Module):
    """LSTS's learnable spatio-temporal sampling (Sec. 3.2) with N shared, learned locations.

    The sampling offsets are a parameter, (N, 2) in (dy, dx) order, initialised either from a
    2-D Gaussian with zero mean and unit variance ("gaussian", the paper's best setting) or on a
    regular sqrt(N) x sqrt(N) grid with unit spacing centred on the position ("grid", the paper's
    "uniform" initialisation, a MatchTrans-like neighbourhood). The authors' checkpoints hold them
    as ``init_offset`` in (dx, dy) order: swap the columns when converting (see the module
    docstring).
    """

    def __init__(self, num_points=9, init="gaussian", normalization="softmax", eps=1e-6):
        """
        Args:
            num_points (int): N, number of sampling locations.
            init (str): "gaussian" or "grid" initialisation of the offsets.
            normalization (str): "softmax" or "sum" (Eq. 3), see
                :func:`deformable_similarity_sampling`.
            eps (float): denominator epsilon of the "sum" normalisation.
        """
        super().__init__()
        if num_points < 1:
            raise ValueError(
                f"DeformableSimilaritySampling: num_points must be >= 1, got {num_points}"
            )
        if init not in ("gaussian", "grid"):
            raise ValueError(
                f"DeformableSimilaritySampling: init must be 'gaussian' or 'grid', got {init!r}"
            )
        if init == "grid" and math.isqrt(num_points) ** 2 != num_points:
            raise ValueError(
                f"DeformableSimilaritySampling: a grid needs a square num_points, got {num_points}"
            )
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"DeformableSimilaritySampling: normalization must be one of {NORMALIZATIONS}, "
                f"got {normalization!r}"
            )
        self.num_points = num_points
        self.init = init
        self.normalization = normalization
        self.eps = eps
        self.offsets = nn.Parameter(torch.empty(num_points, 2))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            if self.init == "gaussian":
                self.offsets.normal_(0.0, 1.0)
            else:
                side = math.isqrt(self.num_points)
                steps = torch.arange(side, dtype=self.offsets.dtype) - (side - 1) / 2
                grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)
                self.offsets.copy_(grid.reshape(-1, 2))

    def training_records(self):
        """What the trainer records of the learned locations
        (:class:`vod_d2.engine.trainer.ModuleRecordsWriter`): their root-mean-square distance
        from the sampled position, in feature cells (how far they spread)."""
        return {"locations_rms": float(self.offsets.detach().pow(2).sum(dim=1).mean().sqrt())}

    def forward(self, query, key, value, offsets=None):
        """
        Args:
            query (Tensor): (B, C', H, W) embedding of the frame being predicted.
            key (Tensor): (B, C', H, W) embedding of the frame sampled from.
            value (Tensor): (B, C, H, W) features aggregated.
            offsets (Tensor, optional): (B, 2N, H, W) per-position offsets to use instead of the
                learned (N, 2) ones.

        Returns:
            Tensor: (B, C, H, W) aggregated features.
        """
        if offsets is None:
            offsets = self.offsets
            # A float32 parameter stays float32 with half-precision features (its gradient sums
            # over every position), otherwise it follows the features.
            if not (query.dtype in _LOW_PRECISION and offsets.dtype == torch.float32):
                offsets = offsets.to(query.dtype)
        return deformable_similarity_sampling(
            query, key, value, offsets, self.normalization, self.eps
        )

    def extra_repr(self):
        return (
            f"num_points={self.num_points}, init={self.init}, "
            f"normalization={self.normalization}, eps={self.eps}"
        )
