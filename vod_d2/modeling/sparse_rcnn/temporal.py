"""
The two temporal modules of SparseVOD's Temporal Dynamic Head (Hashmi et al., BMVC 2022, §3.1):
Temporal RoI Feature Extraction (TFE) and Semantic Proposal Feature Aggregation (SPFA).
"""

from typing import List

import torch
from torch import nn

from vod_d2.layers import temporal_roi_align
from vod_d2.layers.temporal_roi_align import MAX_K

from ..temporal.gate import GateSpec, maybe_gate

__all__ = [
    "AGGREGATIONS",
    "TemporalFeatureExtraction",
    "SemanticProposalAggregation",
]

# How TFE and SPFA weight what they aggregate (Table 4): multi-head attention or the mean.
AGGREGATIONS = ("MSA", "AVG")


def _check_aggregation(key, aggregation):
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"{key}={aggregation!r} is not one of {AGGREGATIONS}")


class TemporalFeatureExtraction(nn.Module):
    """
    TFE: a target RoI feature ``P_t`` (d, S, S) fused with its most similar features in the T
    support frames (:func:`vod_d2.layers.temporal_roi_align`: for each RoI cell, the
    softmax-weighted mean of the K support locations of highest cosine similarity, on the
    support maps of the FPN level the RoI was pooled from), per RoI cell m:

    ``out(m) = sum_j w_j(m) X_j(m)`` over ``X_0 = P_t`` and the T temporal RoI features
    ``X_1..X_T``.

    With ``"MSA"`` the weights are a multi-head attention of the target over the T + 1
    features (Gong et al.'s temporal attentional aggregation): a 3x3 conv embeds every
    ``X_j``, its channels split into ``num_heads`` groups, and head h weights group h of the
    ``X_j`` by ``softmax_j(<e_0^h(m), e_j^h(m)> / sqrt(d / num_heads))``. With ``"AVG"``,
    ``w_j = 1 / (T + 1)`` (Table 4's "TFE (Avg.)"). Either way the output is a convex
    combination of the candidates, so identical candidates give that feature back.

    With ``identity_init`` (``MODEL.VIDEO.IDENTITY_INIT``) the combination passes through a
    residual gate to ``P_t`` that starts closed (:mod:`vod_d2.modeling.temporal.gate`), so TFE
    starts as the RoIAlign of the single-frame Sparse R-CNN it is fine-tuned from (and SPFA
    starts as the identity: together SparseVOD starts as that detector).
    """

    def __init__(
        self,
        dim: int,
        *,
        k: int = 2,
        num_heads: int = 4,
        aggregation: str = "MSA",
        identity_init: bool = False,
        gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            dim: d, width of RoI features and support maps.
            k: most similar support locations per RoI cell (Temporal RoI Align's K).
            num_heads: attention heads; must divide ``dim``.
            aggregation: ``"MSA"`` or ``"AVG"``.
            identity_init: start as the target's RoI features (a residual gate).
            gate: the residual gate with ``identity_init`` (``MODEL.VIDEO.GATE``).
        """
        super().__init__()
        _check_aggregation("MODEL.SPARSEVOD.TFE.AGGREGATION", aggregation)
        if dim % num_heads:
            raise ValueError(
                f"MODEL.SPARSEVOD.TFE.NUM_HEADS={num_heads} must divide the FPN width ({dim})"
            )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"MODEL.SPARSEVOD.TFE.TOP_K must be an int in [1, {MAX_K}], got {k!r}")
        self.k = k
        self.num_heads = num_heads
        self.aggregation = aggregation
        if aggregation == "MSA":
            self.embed = nn.Conv2d(dim, dim, 3, padding=1)
        self.residual_gate = maybe_gate(identity_init, dim, gate)

    def forward(
        self,
        roi_features: torch.Tensor,
        support_maps: List[torch.Tensor],
        roi_image: torch.Tensor,
        roi_level: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            roi_features (Tensor): (R, d, S, S) target RoI features ``P_t``.
            support_maps (list[Tensor]): per FPN level l, (B, T, d, H_l, W_l) support maps.
            roi_image (Tensor): (R,) int64 target image of each RoI, in [0, B).
            roi_level (Tensor): (R,) int64 index in ``support_maps`` of each RoI's level.

        Returns:
            Tensor: (R, d, S, S) temporal RoI features.
        """
        r = roi_features.shape[0]
        t = support_maps[0].shape[1]
        temporal = roi_features.new_zeros(r, t, *roi_features.shape[1:])
        for level, maps in enumerate(support_maps):
            inds = (roi_level == level).nonzero().squeeze(1)
            # Skipping an empty level is a branch on data, which a traced graph cannot hold (the
            # op returns nothing for no RoI).
            if torch.compiler.is_compiling() or inds.numel():
                temporal = temporal.index_put(
                    (inds,), temporal_roi_align(roi_features[inds], maps, roi_image[inds], self.k)
                )
        candidates = torch.cat([roi_features[:, None], temporal], dim=1)  # (R, T + 1, d, S, S)
        if self.aggregation == "AVG":
            fused = candidates.mean(dim=1)
        else:
            heads = candidates.unflatten(2, (self.num_heads, -1))  # (R, T + 1, h, d / h, S, S)
            embedded = self.embed(candidates.flatten(0, 1)).view_as(heads)
            logits = (embedded[:, :1] * embedded).sum(dim=3) / heads.shape[3] ** 0.5
            weights = logits.softmax(dim=1)  # (R, T + 1, h, S, S): over the T + 1 frames
            fused = (weights.unsqueeze(3) * heads).sum(dim=1).flatten(1, 2)
        if self.residual_gate is None:
            return fused
        return self.residual_gate(roi_features, fused)


class SemanticProposalAggregation(nn.Module):
    """
    SPFA (Eq. 1): the target's temporal object features ``P_t`` (N, d) gather the support
    frames' object features ``P_s`` (M = T x N, d) by multi-head attention,

    ``W_t = softmax(phi(P_s) theta(P_t)^T / sqrt(d')) sigma(P_s)``

    (``theta``, ``phi``, ``sigma`` the query, key and value projections of
    ``nn.MultiheadAttention``; its output projection joins the heads), and the enhanced target
    features are ``P_t + W_t``. With ``"AVG"``, ``W_t = mean_j sigma(P_s)_j`` (Table 4's
    "SPFA (Avg.)").

    The residual keeps the target's own features (Eq. 1 defines only what is aggregated).
    The layer producing ``W_t`` (the attention's output projection, or ``sigma`` for
    ``"AVG"``) starts at zero, so SPFA starts as the identity and SparseVOD starts as the
    single-frame Sparse R-CNN it is warm-started from.
    """

    def __init__(
        self, dim: int, *, num_heads: int = 8, aggregation: str = "MSA", dropout: float = 0.0
    ):
        """
        Args:
            dim: d, width of the object features.
            num_heads: attention heads; must divide ``dim``.
            aggregation: ``"MSA"`` or ``"AVG"``.
            dropout: dropout on the attention weights.
        """
        super().__init__()
        _check_aggregation("MODEL.SPARSEVOD.SPFA.AGGREGATION", aggregation)
        if dim % num_heads:
            raise ValueError(
                f"MODEL.SPARSEVOD.SPFA.NUM_HEADS={num_heads} must divide the FPN width ({dim})"
            )
        self.aggregation = aggregation
        if aggregation == "MSA":
            self.attention = nn.MultiheadAttention(
                dim, num_heads, dropout=dropout, batch_first=True
            )
            last = self.attention.out_proj
        else:
            self.value = nn.Linear(dim, dim)
            last = self.value
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, object_features: torch.Tensor, support_features: torch.Tensor):
        """
        Args:
            object_features (Tensor): (B, N, d) the targets' object features.
            support_features (Tensor): (B, M, d) the object features of each target's supports.

        Returns:
            Tensor: (B, N, d) enhanced object features.
        """
        if self.aggregation == "AVG":
            aggregated = self.value(support_features).mean(dim=1, keepdim=True)
        else:
            aggregated = self.attention(
                object_features, support_features, support_features, need_weights=False
            )[0]
        return object_features + aggregated
