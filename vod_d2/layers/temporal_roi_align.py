"""Temporal RoI Align: RoI features gathered from a support frame by similarity.

SparseVOD's Temporal RoI Feature Extraction (Sec. 3.1), after Gong et al. (AAAI'21). For every
cell m of a target RoI feature P_t and the support map F of the RoI's image:

* cos(m, p) = <P_t(m) / |P_t(m)|, F(p) / |F(p)|> for all H x W locations p (cosine similarity);
* the K most similar locations p_1..p_K (equal similarities: the lower flat index first);
* out(m) = sum_k softmax_k(cos(m, p_k)) F(p_k).

Norms are clamped at 1e-12 (as ``torch.nn.functional.normalize``). The top-K selection is not
differentiated: gradients reach both maps through the weights and the averaged features.

The reference is the usual matmul -> top-K -> softmax -> gather, which holds an (R S^2) x (H W)
similarity matrix and an (R S^2, K, C) gather per support map. The compiled op computes the
similarities chunk by chunk (at most 2^22 at a time) and keeps only the top K of each cell,
streamed in local arrays, so K is limited to :data:`MAX_K`.
"""

import torch
import torch.nn.functional as F
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
    if support_features.dim() != 4:
        raise ValueError(
            f"{op}: support_features must be (B, C, H, W), got {tuple(support_features.shape)}"
        )
    if roi_features.shape[1] != support_features.shape[1]:
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
    locations = support_features.shape[2] * support_features.shape[3]
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


class _TemporalRoIAlign(torch.autograd.Function):
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
        support_features (Tensor): (B, C, H, W) feature maps of the support frames (F_{t+s}).
        roi_batch_index (Tensor): (R,) int64, the support map of each RoI, in [0, B).
        k (int): number of most similar locations, 1 <= k <= min(32, H * W).

    Returns:
        Tensor: (R, C, S, S) temporal RoI features.
    """
    _check_inputs(roi_features, support_features, roi_batch_index, k)
    if not _ext.use_kernel("temporal_roi_align", roi_features.device):
        return temporal_roi_align_reference(roi_features, support_features, roi_batch_index, k)
    _check_batch_index(roi_batch_index, support_features.shape[0])
    return _TemporalRoIAlign.apply(roi_features, support_features, roi_batch_index, k)


def temporal_roi_align_reference(roi_features, support_features, roi_batch_index, k):
    """Pure-PyTorch :func:`temporal_roi_align`: matmul -> top-K -> softmax -> gather per image.

    Same arguments and result; holds an (R_b S^2) x (H W) similarity matrix per support map.
    """
    _check_inputs(roi_features, support_features, roi_batch_index, k)
    _check_batch_index(roi_batch_index, support_features.shape[0])
    r, c = roi_features.shape[:2]
    queries = F.normalize(roi_features.flatten(2).transpose(1, 2), dim=2, eps=_NORM_EPS)
    keys = F.normalize(support_features.flatten(2), dim=1, eps=_NORM_EPS)
    values = support_features.flatten(2).transpose(1, 2)  # (B, H W, C)
    output = roi_features.new_zeros(r, queries.shape[1], c)
    for b in roi_batch_index.unique().tolist():
        rois = (roi_batch_index == b).nonzero().squeeze(1)
        similarity = queries[rois] @ keys[b]  # (R_b, S^2, H W)
        top_sim, top_index = similarity.topk(k, dim=2)
        weights = top_sim.softmax(dim=2)
        gathered = values[b][top_index]  # (R_b, S^2, K, C)
        output = output.index_put((rois,), (weights.unsqueeze(-1) * gathered).sum(dim=2))
    return output.transpose(1, 2).reshape(roi_features.shape)


class TemporalRoIAlign(nn.Module):
    """Temporal RoI features from a support map: :func:`temporal_roi_align` with a fixed K."""

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
            support_features (Tensor): (B, C, H, W) support feature maps.
            roi_batch_index (Tensor): (R,) int64 support map of each RoI.

        Returns:
            Tensor: (R, C, S, S) temporal RoI features.
        """
        return temporal_roi_align(roi_features, support_features, roi_batch_index, self.k)

    def extra_repr(self):
        return f"k={self.k}"
