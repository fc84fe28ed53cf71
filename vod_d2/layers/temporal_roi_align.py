"""Temporal RoI Align: RoI features gathered from support frames by similarity.

SparseVOD's Temporal RoI Feature Extraction (Sec. 3.1), after Gong et al. (AAAI'21). For every
cell m of a target RoI feature P_t and a support map F of the RoI's image:

* cos(m, p) = <P_t(m) / |P_t(m)|, F(p) / |F(p)|> for all H x W locations p (cosine similarity);
* the K most similar locations p_1..p_K (equal similarities: the lower flat index first);
* out(m) = sum_k softmax_k(cos(m, p_k)) F(p_k).

Two forms, told apart by the support features' shape:

* ``(B, C, H, W)``: one support map per RoI, ``roi_batch_index[r]``; output ``(R, C, S, S)``;
* ``(B, T, C, H, W)``: every RoI against the T support maps of its group ``roi_batch_index[r]``
  (the T support frames of its target frame) at once; output ``(R, T, C, S, S)``. The RoIs are
  normalised once and never copied T times (TFE with T support frames).

Norms are clamped at 1e-12 (as ``torch.nn.functional.normalize``), and a clamped norm passes no
gradient: an all-zero RoI cell (a bin outside the map) gets a zero gradient instead of one scaled
by 1e12, and a zero support location only the gradient of its value. The top-K selection is not
differentiated: gradients reach both maps through the weights and the averaged features.

The reference is the usual matmul -> top-K -> softmax -> gather, which holds an (R S^2) x (H W)
similarity matrix and an (R S^2, K, C) gather per support map. The compiled op computes the
similarities chunk by chunk (at most 2^22 at a time) and keeps only the top K of each cell,
streamed in local arrays, so K is limited to :data:`MAX_K`.
"""

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from vod_d2.layers import _ext

MAX_K = 32
_NORM_EPS = 1e-12


def _check_inputs(roi_features, support_features, roi_batch_index, k):
    op = "temporal_roi_align"
    for name, t in (
        ("roi_features", roi_features),
        ("support_features", support_features),
        ("roi_batch_index", roi_batch_index),
    ):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if roi_features.dim() != 4:
        raise ValueError(
            f"{op}: roi_features must be (R, C, S, S), got {tuple(roi_features.shape)}"
        )
    if support_features.dim() not in (4, 5) or support_features.shape[0] == 0:
        raise ValueError(
            f"{op}: support_features must be (B, C, H, W) or (B, T, C, H, W) with B >= 1, got "
            f"{tuple(support_features.shape)}"
        )
    if roi_features.shape[1] != support_features.shape[-3]:
        raise ValueError(
            f"{op}: roi_features {tuple(roi_features.shape)} and support_features "
            f"{tuple(support_features.shape)} must have the same channels"
        )
    if not roi_features.is_floating_point() or roi_features.dtype != support_features.dtype:
        raise TypeError(
            f"{op}: roi_features and support_features must share a floating dtype, got "
            f"{roi_features.dtype} and {support_features.dtype}"
        )
    if roi_batch_index.shape != roi_features.shape[:1] or roi_batch_index.dtype != torch.int64:
        raise ValueError(
            f"{op}: roi_batch_index must be an int64 ({roi_features.shape[0]},) tensor, got "
            f"{roi_batch_index.dtype} {tuple(roi_batch_index.shape)}"
        )
    if len({roi_features.device, support_features.device, roi_batch_index.device}) != 1:
        raise ValueError(
            f"{op}: inputs must be on one device, got {roi_features.device}, "
            f"{support_features.device}, {roi_batch_index.device}"
        )
    locations = support_features.shape[-2] * support_features.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(MAX_K, locations):
        raise ValueError(
            f"{op}: k must be an int in [1, min({MAX_K}, H * W = {locations})], got {k!r}"
        )


def _check_batch_index(roi_batch_index, num_images):
    if roi_batch_index.numel() and (
        roi_batch_index.min() < 0 or roi_batch_index.max() >= num_images
    ):
        raise ValueError(
            f"temporal_roi_align: roi_batch_index values must lie in [0, {num_images}), got "
            f"[{int(roi_batch_index.min())}, {int(roi_batch_index.max())}]"
        )


@_ext.register_fake("temporal_roi_align_forward")
def _forward_fake(roi_features, support_features, roi_batch_index, k):
    r, c, s1, s2 = roi_features.shape
    t = support_features.shape[1]
    acc_dtype = torch.float64 if roi_features.dtype == torch.float64 else torch.float32
    return (
        roi_features.new_empty(r, t, c, s1, s2),
        roi_features.new_empty(r, t, s1 * s2, k, dtype=acc_dtype),
        roi_features.new_empty(r, t, s1 * s2, k, dtype=torch.int64),
    )


@_ext.register_fake("temporal_roi_align_backward")
def _backward_fake(
    grad_output, roi_features, support_features, roi_batch_index, topk_sim, topk_index
):
    return roi_features.new_empty(roi_features.shape), support_features.new_empty(
        support_features.shape
    )


class _TemporalRoIAlign(torch.autograd.Function):
    """The (B, T, C, H, W) form; the (B, C, H, W) one is its T = 1 case."""

    @staticmethod
    def forward(ctx, roi_features, support_features, roi_batch_index, k):
        output, topk_sim, topk_index = torch.ops.vod_d2.temporal_roi_align_forward(
            roi_features, support_features, roi_batch_index, k
        )
        ctx.save_for_backward(roi_features, support_features, roi_batch_index, topk_sim, topk_index)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_roi, grad_support = torch.ops.vod_d2.temporal_roi_align_backward(
            grad_output, *ctx.saved_tensors
        )
        return grad_roi, grad_support, None, None


def temporal_roi_align(roi_features, support_features, roi_batch_index, k):
    """For each RoI cell, the softmax-weighted mean of its K most similar support locations.

    Runs the compiled op when available for the inputs' device, else
    :func:`temporal_roi_align_reference` (same semantics, one warning).

    Args:
        roi_features (Tensor): (R, C, S, S) RoI features of the target frame (P_t).
        support_features (Tensor): (B, C, H, W) support feature maps (F_{t+s}), one per RoI; or
            (B, T, C, H, W): T support maps per group (e.g. the T support frames of each of B
            target frames), every RoI matched against all T maps of its group.
        roi_batch_index (Tensor): (R,) int64, the map (or group of T maps) of each RoI, in [0, B).
        k (int): number of most similar locations, 1 <= k <= min(32, H * W).

    Returns:
        Tensor: (R, C, S, S) temporal RoI features, or (R, T, C, S, S) for grouped support maps
        (out[r, t] from support map t of group roi_batch_index[r]).
    """
    _check_inputs(roi_features, support_features, roi_batch_index, k)
    if not _ext.use_kernel("temporal_roi_align", roi_features.device):
        return temporal_roi_align_reference(roi_features, support_features, roi_batch_index, k)
    if not torch.compiler.is_compiling():  # data-dependent; the kernel checks it again
        _check_batch_index(roi_batch_index, support_features.shape[0])
    if support_features.dim() == 4:
        return _TemporalRoIAlign.apply(
            roi_features, support_features.unsqueeze(1), roi_batch_index, k
        ).squeeze(1)
    return _TemporalRoIAlign.apply(roi_features, support_features, roi_batch_index, k)


def _normalize(x, dim):
    """x / max(|x|, eps) along ``dim``, with no gradient where the norm is clamped (as the op)."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    unit = x / norm.clamp_min(_NORM_EPS)
    return torch.where(norm > _NORM_EPS, unit, unit.detach())


def _top_k(similarity, k):
    """The k largest similarities of each row (last dim), descending, and their indices.

    Equal similarities are taken lower index first, NaN as -inf, as the op's selection does
    (``torch.topk`` leaves the order of equal values open, so rows with ties are re-ranked by a
    stable sort).
    """
    similarity = torch.where(similarity.isnan(), float("-inf"), similarity)
    with torch.no_grad():
        values, index = similarity.topk(k, dim=-1)
        tied = (similarity == values[..., -1:]).sum(dim=-1) > 1
        tied |= (values[..., 1:] == values[..., :-1]).any(dim=-1)
        if tied.any():
            ranked = similarity[tied].sort(dim=-1, descending=True, stable=True).indices
            index[tied] = ranked[..., :k]
    return similarity.gather(-1, index), index


def temporal_roi_align_reference(roi_features, support_features, roi_batch_index, k):
    """Pure-PyTorch :func:`temporal_roi_align`: matmul -> top-K -> softmax -> gather per map.

    Same arguments and result; holds an (R_b S^2) x (H W) similarity matrix per support map.
    """
    _check_inputs(roi_features, support_features, roi_batch_index, k)
    _check_batch_index(roi_batch_index, support_features.shape[0])
    grouped = support_features.dim() == 5
    support = support_features if grouped else support_features.unsqueeze(1)
    num_groups, num_supports = support.shape[:2]
    queries = _normalize(roi_features.flatten(2).transpose(1, 2), dim=2)  # (R, S^2, C)
    keys = _normalize(support.flatten(3), dim=2)  # (B, T, C, H W)
    values = support.flatten(3).transpose(2, 3)  # (B, T, H W, C)
    outputs, order = [], []
    for b in range(num_groups):  # every group, even without RoIs: the output stays in the graph
        rois = (roi_batch_index == b).nonzero().squeeze(1)
        per_support = []
        for t in range(num_supports):
            top_sim, top_index = _top_k(queries[rois] @ keys[b, t], k)  # (R_b, S^2, K)
            gathered = values[b, t][top_index]  # (R_b, S^2, K, C)
            per_support.append((top_sim.softmax(dim=2).unsqueeze(-1) * gathered).sum(dim=2))
        outputs.append(torch.stack(per_support, dim=1))  # (R_b, T, S^2, C)
        order.append(rois)
    output = torch.cat(outputs)[torch.cat(order).argsort()]  # back to the RoIs' order
    output = output.transpose(2, 3).reshape(
        roi_features.shape[0], num_supports, *roi_features.shape[1:]
    )
    return output if grouped else output.squeeze(1)


class TemporalRoIAlign(nn.Module):
    """Temporal RoI features from support maps: :func:`temporal_roi_align` with a fixed K."""

    def __init__(self, k):
        """
        Args:
            k (int): number of most similar support locations per RoI cell (1..32).
        """
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"TemporalRoIAlign: k must be an int in [1, {MAX_K}], got {k!r}")
        self.k = k

    def forward(self, roi_features, support_features, roi_batch_index):
        """
        Args:
            roi_features (Tensor): (R, C, S, S) RoI features of the target frame.
            support_features (Tensor): (B, C, H, W) support feature maps, or (B, T, C, H, W)
                groups of T maps.
            roi_batch_index (Tensor): (R,) int64 support map (or group) of each RoI.

        Returns:
            Tensor: (R, C, S, S), or (R, T, C, S, S) for groups, temporal RoI features.
        """
        return temporal_roi_align(roi_features, support_features, roi_batch_index, self.k)

    def extra_repr(self):
        return f"k={self.k}"
