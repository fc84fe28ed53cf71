"""MatchTrans: local correlation and aggregation for aligning STMN's memory (Sec. 3.3).

A (2k + 1) x (2k + 1) window of displacements is indexed by d = (dy + k) * (2k + 1) + (dx + k),
row-major with dy (rows) outer. Features outside the map are zero (zero padding).

* ``local_correlation(a, b, k)[n, d, y, x] = sum_c a[n, c, y, x] * b[n, c, y + dy, x + dx]``
* ``local_aggregate(w, m, k)[n, c, y, x] = sum_d w[n, d, y, x] * m[n, c, y + dy, x + dx]``

:class:`MatchTransAlign` chains them with the normalisation of the paper: the affinities of F_t
with the window of F_{t-1} are normalised over the window into Gamma, and the aligned memory is
M'_{t-1}(x, y) = sum_{i,j} Gamma_{x,y}(i, j) M_{t-1}(x + i, y + j).
"""

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from vod_d2.layers import _ext

NORMALIZATIONS = ("sum", "softmax")


def _check_pair(op, x, y, x_name, y_name, k, same_channels):
    for name, t in ((x_name, x), (y_name, y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be (N, C, H, W), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{op}: k must be an int >= 0, got {k!r}")
    if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"{op}: {x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)} must share batch and "
            "spatial size"
        )
    if same_channels and x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{op}: {x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)} must have the same "
            "channels"
        )
    if x.dtype != y.dtype:
        raise TypeError(f"{op}: {x_name} ({x.dtype}) and {y_name} ({y.dtype}) dtypes differ")
    if x.device != y.device:
        raise ValueError(f"{op}: {x_name} ({x.device}) and {y_name} ({y.device}) devices differ")


def _check_window(op, weights, k):
    if weights.shape[1] != (2 * k + 1) ** 2:
        raise ValueError(
            f"{op}: weights must have (2k + 1)^2 = {(2 * k + 1) ** 2} channels for k = {k}, got "
            f"shape {tuple(weights.shape)}"
        )


def _shifted(padded, k, dy, dx, height, width):
    """The window of a map zero-padded by k, displaced by (dy, dx): (N, C, H, W)."""
    return padded[:, :, k + dy : k + dy + height, k + dx : k + dx + width]


def _displacements(k):
    return [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)]


@_ext.register_fake("local_correlation_forward")
def _correlation_fake(a, b, k):
    n, _, h, w = a.shape
    return a.new_empty(n, (2 * k + 1) ** 2, h, w)


@_ext.register_fake("local_correlation_backward")
def _correlation_backward_fake(grad, a, b, k):
    return a.new_empty(a.shape), b.new_empty(b.shape)


@_ext.register_fake("local_aggregate_forward")
def _aggregate_fake(weights, m, k):
    return m.new_empty(m.shape)


@_ext.register_fake("local_aggregate_backward")
def _aggregate_backward_fake(grad, weights, m, k):
    return weights.new_empty(weights.shape), m.new_empty(m.shape)


class _LocalCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, k):
        ctx.save_for_backward(a, b)
        ctx.k = k
        return torch.ops.vod_d2.local_correlation_forward(a, b, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a, grad_b = torch.ops.vod_d2.local_correlation_backward(grad, a, b, ctx.k)
        return grad_a, grad_b, None


class _LocalAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, m, k):
        ctx.save_for_backward(weights, m)
        ctx.k = k
        return torch.ops.vod_d2.local_aggregate_forward(weights, m, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weights, m = ctx.saved_tensors
        grad_weights, grad_m = torch.ops.vod_d2.local_aggregate_backward(grad, weights, m, ctx.k)
        return grad_weights, grad_m, None


def local_correlation(a, b, k):
    """Dot products of a(y, x) with b over the (2k + 1)^2 window around (y, x).

    Args:
        a (Tensor): (N, C, H, W) features of the frame being aligned to (F_t).
        b (Tensor): (N, C, H, W) features of the other frame (F_{t-1}).
        k (int): window radius.

    Returns:
        Tensor: (N, (2k + 1)^2, H, W) affinities, displacement d = (dy + k) * (2k + 1) + (dx + k).
    """
    _check_pair("local_correlation", a, b, "a", "b", k, same_channels=True)
    if not _ext.use_kernel("local_correlation", a.device):
        return local_correlation_reference(a, b, k)
    return _LocalCorrelation.apply(a, b, k)


def local_aggregate(weights, m, k):
    """Weighted sum of m over the (2k + 1)^2 window around each position.

    Args:
        weights (Tensor): (N, (2k + 1)^2, H, W) window weights (Gamma), same displacement order
            as :func:`local_correlation`.
        m (Tensor): (N, C, H, W) map to aggregate (M_{t-1}).
        k (int): window radius.

    Returns:
        Tensor: (N, C, H, W) aggregated map.
    """
    _check_pair("local_aggregate", weights, m, "weights", "m", k, same_channels=False)
    _check_window("local_aggregate", weights, k)
    if not _ext.use_kernel("local_aggregate", m.device):
        return local_aggregate_reference(weights, m, k)
    return _LocalAggregate.apply(weights, m, k)


def local_correlation_reference(a, b, k):
    """Pure-PyTorch :func:`local_correlation` (same arguments and result)."""
    _check_pair("local_correlation", a, b, "a", "b", k, same_channels=True)
    height, width = a.shape[2:]
    padded = nn.functional.pad(b, (k, k, k, k))
    return torch.stack(
        [
            (a * _shifted(padded, k, dy, dx, height, width)).sum(dim=1)
            for dy, dx in _displacements(k)
        ],
        dim=1,
    )


def local_aggregate_reference(weights, m, k):
    """Pure-PyTorch :func:`local_aggregate` (same arguments and result)."""
    _check_pair("local_aggregate", weights, m, "weights", "m", k, same_channels=False)
    _check_window("local_aggregate", weights, k)
    height, width = m.shape[2:]
    padded = nn.functional.pad(m, (k, k, k, k))
    out = torch.zeros_like(m)
    for d, (dy, dx) in enumerate(_displacements(k)):
        out = out + weights[:, d : d + 1] * _shifted(padded, k, dy, dx, height, width)
    return out


def window_inside_mask(height, width, k, device=None):
    """(1, (2k + 1)^2, H, W) bool: whether displacement d from (y, x) stays inside the map."""
    rows = torch.arange(height, device=device).view(1, 1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, -1)
    dy, dx = torch.tensor(_displacements(k), device=device).view(1, -1, 2, 1, 1).unbind(2)
    return (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)


class MatchTransAlign(nn.Module):
    """Align a memory map of frame t-1 to frame t with MatchTrans (STMN, Sec. 3.3).

    Gamma_{x,y}(i, j) = F_t(x, y) . F_{t-1}(x + i, y + j), normalised over the window:

    * "sum" (the paper): divided by the window's sum (+ eps). Out-of-map displacements have zero
      affinity, so they drop out. Meant for non-negative features (e.g. after a ReLU).
    * "softmax": softmax over the displacements that stay inside the map.

    The aligned memory is M'_{t-1}(x, y) = sum_{i,j} Gamma_{x,y}(i, j) M_{t-1}(x + i, y + j).
    """

    def __init__(self, k=2, normalization="sum", eps=1e-6):
        """
        Args:
            k (int): window radius; the paper uses k = 2 (a 5 x 5 window).
            normalization (str): "sum" or "softmax", see the class docstring.
            eps (float): added to the denominator of the "sum" normalisation.
        """
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"MatchTransAlign: k must be an int >= 0, got {k!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"MatchTransAlign: normalization must be one of {NORMALIZATIONS}, "
                f"got {normalization!r}"
            )
        self.k = k
        self.normalization = normalization
        self.eps = eps

    def transform_coefficients(self, features, prev_features):
        """Gamma: (N, (2k + 1)^2, H, W) window weights, summing to one over dim 1.

        Args:
            features (Tensor): (N, C, H, W) F_t.
            prev_features (Tensor): (N, C, H, W) F_{t-1}.
        """
        affinity = local_correlation(features, prev_features, self.k)
        if self.normalization == "sum":
            return affinity / (affinity.sum(dim=1, keepdim=True) + self.eps)
        inside = window_inside_mask(*affinity.shape[2:], self.k, device=affinity.device)
        return affinity.masked_fill(~inside, float("-inf")).softmax(dim=1)

    def forward(self, features, prev_features, prev_memory):
        """
        Args:
            features (Tensor): (N, C, H, W) features of the current frame, F_t.
            prev_features (Tensor): (N, C, H, W) features of the previous frame, F_{t-1}.
            prev_memory (Tensor): (N, C_m, H, W) memory of the previous frame, M_{t-1}.

        Returns:
            Tensor: (N, C_m, H, W) memory aligned to frame t, M'_{t-1}.
        """
        gamma = self.transform_coefficients(features, prev_features)
        return local_aggregate(gamma.to(prev_memory.dtype), prev_memory, self.k)

    def extra_repr(self):
        return f"k={self.k}, normalization={self.normalization}, eps={self.eps}"
