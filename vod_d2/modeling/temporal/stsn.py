"""
Spatiotemporal Sampling Network (Bertasius et al., ECCV 2018), and its static baseline SSN.

A :class:`SpatioTemporalSamplingBlock` resamples a support frame's feature map at locations
predicted from the (reference, support) pair with deformable convolutions (§4); the sampled maps
of the reference and of its 2K support frames are averaged with per-pixel weights given by the
cosine similarity of their embeddings (Eq. 3-4). The reference is a support frame of itself,
which both defines the weights' anchor ``S(g_{t,t})`` and gives :class:`SSNAggregation`, the
same network fed with the reference alone.

Two properties hold by construction and are tested:

* Identical frames give the reference's own sampled map ``g_{t,t}``, whatever the parameters:
  every ``g_{t,t+k}`` equals ``g_{t,t}``, so the normalised weights of Eq. 3 average copies of it.
* At initialisation, ``g_{t,t+k}`` is ``f_{t+k}`` exactly: the offset convs are zero (integer
  sampling positions, no interpolation) and the last deformable conv is the identity (its centre
  tap is the identity matrix, when its width equals the backbone's: ``MODEL.STSN.OUT_CHANNELS``
  0). An SSN therefore starts as the plain single-frame detector, and an STSN as FGFA-style
  averaging of the unaligned backbone maps, or, with the residual gate of
  ``MODEL.VIDEO.IDENTITY_INIT``, as SSN.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from fvcore.nn import weight_init
from torch import nn

from ...layers import DeformConv2d
from .build import TEMPORAL_AGGREGATION_REGISTRY, TemporalAggregation
from .gate import GateSpec, maybe_gate

__all__ = [
    "SpatioTemporalSamplingBlock",
    "AggregationEmbedding",
    "STSNAggregation",
    "SSNAggregation",
]

_KERNEL = 3


class _OffsetDeformConv(nn.Module):
    """One step of the sampling block: a 3x3 conv predicting offsets ``o^(i)`` from ``x``, and a
    3x3 deformable conv applying them to ``source`` (``x`` itself, or the support map for the
    last step)."""

    def __init__(self, offset_in: int, in_channels: int, out_channels: int, deformable_groups: int):
        super().__init__()
        self.offset = nn.Conv2d(
            offset_in, 2 * deformable_groups * _KERNEL * _KERNEL, _KERNEL, padding=1
        )
        self.conv = DeformConv2d(in_channels, out_channels, _KERNEL, padding=1)
        # Zero offsets: every step starts as a plain 3x3 conv on the integer grid.
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x, source):
        offsets = self.offset(x)
        return self.conv(source, offsets), offsets


class SpatioTemporalSamplingBlock(nn.Module):
    """
    Samples a support frame's map for a reference frame (§4, "Spatiotemporal Feature Sampling").

    ``f_{t,t+k} = [f_t, f_{t+k}]`` (2c channels) goes through ``num_convs`` 3x3 deformable convs,
    each with its own 3x3 offset conv: ``o^(1)`` is predicted from ``f_{t,t+k}`` and deforms a
    conv over it into ``g^(1)``; ``o^(i)`` is predicted from ``g^(i-1)`` and deforms a conv over
    it into ``g^(i)``, up to ``o^(num_convs)``, which instead deforms a conv over the *original*
    support map ``f_{t+k}``: its output ``g^(num_convs)_{t,t+k}`` is the sampled map. The paper
    uses ``num_convs=4`` layers of 1024 channels and, as §3 describes deformable convs, offsets
    shared by all channels (``deformable_groups=1``). It names no activation; ReLUs follow the
    intermediate layers here, and none the last one: it is the sampling itself, linear in
    ``f_{t+k}``, and identity-initialised when ``out_channels`` equals the input width.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        conv_dim: int = 1024,
        out_channels: int = 0,
        num_convs: int = 4,
        deformable_groups: int = 1,
    ):
        """
        Args:
            in_channels: width c of the backbone maps.
            conv_dim: width of the intermediate maps ``g^(1)`` ... ``g^(num_convs - 1)``.
            out_channels: width of the sampled map; 0 means ``in_channels``.
            num_convs: number of deformable convs (each with its offset conv), >= 1.
            deformable_groups: channel groups that get their own offsets.
        """
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"MODEL.STSN.NUM_CONVS must be >= 1, got {num_convs}")
        out_channels = out_channels or in_channels
        for name, width in [("the backbone width", in_channels), ("CONV_DIM", conv_dim)]:
            # deform_conv2d splits a layer's input channels into the offset groups.
            if width % deformable_groups:
                raise ValueError(
                    f"MODEL.STSN.DEFORMABLE_GROUPS={deformable_groups} must divide {name} ({width})"
                )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.layers = nn.ModuleList()
        width = 2 * in_channels
        for _ in range(num_convs - 1):
            layer = _OffsetDeformConv(width, width, conv_dim, deformable_groups)
            weight_init.c2_msra_fill(layer.conv)
            self.layers.append(layer)
            width = conv_dim
        self.sample = _OffsetDeformConv(width, in_channels, out_channels, deformable_groups)
        self._init_sampling(self.sample.conv)

    @staticmethod
    def _init_sampling(conv: DeformConv2d):
        """Identity when the widths match (``g_{t,t+k} = f_{t+k}`` at zero offsets), else MSRA."""
        if conv.in_channels != conv.out_channels:
            weight_init.c2_msra_fill(conv)
            return
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, :, _KERNEL // 2, _KERNEL // 2] = torch.eye(conv.in_channels)
            conv.bias.zero_()

    def forward(self, ref, support, return_offsets: bool = False):
        """
        Args:
            ref (Tensor): (N, C, H, W) reference maps ``f_t``.
            support (Tensor): (N, C, H, W) support maps ``f_{t+k}`` (row i pairs with ref row i).
            return_offsets: also return the offsets of the last (sampling) layer.

        Returns:
            Tensor: (N, C_out, H, W) sampled maps ``g_{t,t+k}``; with ``return_offsets`` also
            (N, 2 * deformable_groups * 9, H, W) offsets ``o^(num_convs)`` as (dy, dx) pairs.
        """
        if ref.shape != support.shape or ref.shape[1] != self.in_channels:
            raise ValueError(
                f"reference {tuple(ref.shape)} and support {tuple(support.shape)} maps must "
                f"both be (N, {self.in_channels}, H, W)"
            )
        x = torch.cat([ref, support], dim=1)
        for layer in self.layers:
            x, _ = layer(x, x)
            x = F.relu(x)
        sampled, offsets = self.sample(x, support)
        return (sampled, offsets) if return_offsets else sampled


class AggregationEmbedding(nn.Module):
    """
    The 3-layer subnetwork S(.) whose per-pixel cosine similarities weight Eq. 3 (§4.1: 1x1,
    3x3 and 1x1 convs of 512, 512 and 2048 channels, ReLU between them, as in FGFA).
    """

    def __init__(self, in_channels: int, dims: Sequence[int] = (512, 512, 2048)):
        """
        Args:
            in_channels: width of the sampled maps.
            dims: output widths of the three convs.
        """
        super().__init__()
        if len(dims) != 3:
            raise ValueError(f"MODEL.STSN.EMBED_DIMS needs 3 widths, got {tuple(dims)}")
        kernels = (1, 3, 1)
        widths = (in_channels, *dims)
        self.convs = nn.ModuleList(
            Conv2d(widths[i], widths[i + 1], kernels[i], padding=kernels[i] // 2) for i in range(3)
        )
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)

    def forward(self, x):
        """
        Args:
            x (Tensor): (N, C, H, W) sampled maps.

        Returns:
            Tensor: (N, dims[-1], H, W) embeddings, L2-normalised over channels.
        """
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return F.normalize(x, dim=1)


@TEMPORAL_AGGREGATION_REGISTRY.register()
class STSNAggregation(TemporalAggregation):
    """
    STSN's temporal aggregation: every frame of the window (the reference first, as a support of
    itself) is sampled for the reference by one shared :class:`SpatioTemporalSamplingBlock`,
    and the sampled maps are summed with weights ``softmax_k cos(S(g_{t,t}), S(g_{t,t+k}))`` per
    pixel (Eq. 3-4: exp of the cosine similarity, normalised over the 2K+1 frames).

    With ``MODEL.VIDEO.IDENTITY_INIT`` (:mod:`.gate`) the weighted sum ends in a residual gate to
    ``g_{t,t}`` that starts closed, so STSN starts as SSN (and, from a single-frame checkpoint,
    as the single-frame detector): the paper's weights, exp of cosine similarities of a random
    embedding, would otherwise start as a near-uniform average of unaligned frames.

    The (reference, frame) pairs go through the sampling block ``pairs_per_pass`` at a time and
    the weighted sum is accumulated over the passes, so at test time (2K+1 = 27 pairs) memory
    beyond the feature cache does not grow with K. Frame offsets are not used: the paper's
    weights depend on appearance only. The module is stateless (the test-time feature cache
    lives in the meta-architecture). With no support frame it returns ``g_{t,t}`` (a single
    weight of 1) without running the embedding, so it can also be tested on a (0, 0) window.
    """

    @configurable
    def __init__(
        self,
        *,
        sampling: SpatioTemporalSamplingBlock,
        embedding: AggregationEmbedding,
        input_shape: ShapeSpec,
        pairs_per_pass: int = 0,
        identity_init: bool = False,
        gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            sampling: the sampling block shared by all support frames.
            embedding: the subnetwork S(.) of the aggregation weights.
            input_shape: shape of the backbone map (its stride is the output's).
            pairs_per_pass: (reference, frame) pairs sampled at once; 0 for all of them.
            identity_init: start at ``g_{t,t}`` (``MODEL.VIDEO.IDENTITY_INIT``).
            gate: the residual gate with ``identity_init`` (``MODEL.VIDEO.GATE``).
        """
        super().__init__(input_shape)
        if pairs_per_pass < 0:
            raise ValueError(f"MODEL.STSN.PAIRS_PER_PASS must be >= 0, got {pairs_per_pass}")
        self.sampling = sampling
        self.embedding = embedding
        self.pairs_per_pass = pairs_per_pass
        self.residual_gate = maybe_gate(identity_init, sampling.out_channels, gate)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        sampling = _build_sampling_block(cfg, input_shape)
        return {
            "sampling": sampling,
            "embedding": AggregationEmbedding(sampling.out_channels, cfg.MODEL.STSN.EMBED_DIMS),
            "input_shape": input_shape,
            "pairs_per_pass": cfg.MODEL.STSN.PAIRS_PER_PASS,
            "identity_init": cfg.MODEL.VIDEO.IDENTITY_INIT,
            "gate": GateSpec.from_config(cfg),
        }

    def forward(self, ref, support, offsets, frames):
        """
        Args:
            ref (dict): ``{"feature": (B, C, H, W)}`` reference maps ``f_t``.
            support (dict): ``{"feature": (B, S, C, H, W)}`` support maps ``f_{t+k}``.
            offsets (Tensor): (B, S) frame offsets (unused: the weights depend on appearance).
            frames: the reference frames' metadata (unused).

        Returns:
            Tensor: (B, C_out, H, W) aggregated map ``g_t^agg`` (:meth:`aggregate`).
        """
        _check_inputs(ref["feature"], support["feature"], offsets)
        return self.aggregate(ref["feature"], support["feature"])

    def aggregate(self, ref, support, return_weights: bool = False):
        """
        Eq. 3-4 over the reference and its support frames.

        Args:
            ref (Tensor): (B, C, H, W) reference maps ``f_t``.
            support (Tensor): (B, S, C, H, W) support maps ``f_{t+k}``.
            return_weights: also return the aggregation weights.

        Returns:
            Tensor: (B, C_out, H, W) aggregated map ``g_t^agg`` (through the residual gate, if
            any); with ``return_weights`` also the (B, 1 + S, H, W) weights ``w_{t,t+k}``, the
            reference's first, summing to 1 over dim 1.
        """
        if support.shape[1] == 0:
            sampled = self.sampling(ref, ref)
            weights = sampled.new_ones((ref.shape[0], 1, *sampled.shape[-2:]))
            return (sampled, weights) if return_weights else sampled
        numerator, denominator, exps, anchor = 0, 0, [], None
        for frames in self._passes(ref, support):
            batch, num = frames.shape[:2]
            refs = ref[:, None].expand(-1, num, -1, -1, -1)
            sampled = self.sampling(refs.flatten(0, 1), frames.flatten(0, 1))
            embedded = self.embedding(sampled).unflatten(0, (batch, num))
            sampled = sampled.unflatten(0, (batch, num))
            if anchor is None:
                # g_{t,t} and S(g_{t,t}): the reference comes first
                own, anchor = sampled[:, 0], embedded[:, :1]
            # Eq. 4. Cosines lie in [-1, 1], so exp needs no max-shift and the softmax over the
            # 2K+1 frames (Eq. 3's normalisation) can be summed pass by pass.
            exp = (anchor * embedded).sum(dim=2).exp()
            numerator = numerator + (exp[:, :, None] * sampled).sum(dim=1)
            denominator = denominator + exp.sum(dim=1)
            exps.append(exp)
        aggregated = numerator / denominator[:, None]
        if self.residual_gate is not None:
            aggregated = self.residual_gate(own, aggregated)
        if not return_weights:
            return aggregated
        return aggregated, torch.cat(exps, dim=1) / denominator[:, None]

    def _passes(self, ref, support):
        """Split ``[ref] + support`` into (B, n, C, H, W) chunks of ``pairs_per_pass`` frames,
        without stacking the whole window once more."""
        total = 1 + support.shape[1]
        step = self.pairs_per_pass or total
        for begin in range(0, total, step):
            end = min(begin + step, total)
            if begin == 0:
                yield torch.cat([ref[:, None], support[:, : end - 1]], dim=1)
            else:
                yield support[:, begin - 1 : end - 1]

    def output_shape(self):
        return ShapeSpec(channels=self.sampling.out_channels, stride=self.input_shape.stride)


@TEMPORAL_AGGREGATION_REGISTRY.register()
class SSNAggregation(TemporalAggregation):
    """
    SSN, the static baseline of Table 1: the STSN sampling block applied to the reference alone
    (``g_{t,t}``), support frames ignored. Its parameters carry the same names as STSN's
    sampling block, so an SSN checkpoint initialises an STSN (the embedding starts fresh).
    """

    support_keys = ()

    @configurable
    def __init__(self, *, sampling: SpatioTemporalSamplingBlock, input_shape: ShapeSpec):
        """
        Args:
            sampling: the sampling block, fed (reference, reference).
            input_shape: shape of the backbone map (its stride is the output's).
        """
        super().__init__(input_shape)
        self.sampling = sampling

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {"sampling": _build_sampling_block(cfg, input_shape), "input_shape": input_shape}

    def forward(self, ref, support, offsets, frames):
        """
        Args:
            ref (dict): ``{"feature": (B, C, H, W)}`` reference maps.
            support (dict): empty: support frames contribute nothing.
            offsets (Tensor): (B, S) frame offsets (ignored).
            frames: the reference frames' metadata (ignored).

        Returns:
            Tensor: (B, C_out, H, W) the reference sampled for itself, ``g_{t,t}``.
        """
        return self.sampling(ref["feature"], ref["feature"])

    def output_shape(self):
        return ShapeSpec(channels=self.sampling.out_channels, stride=self.input_shape.stride)


def _build_sampling_block(cfg, input_shape: ShapeSpec) -> SpatioTemporalSamplingBlock:
    stsn = cfg.MODEL.STSN
    return SpatioTemporalSamplingBlock(
        input_shape.channels,
        conv_dim=stsn.CONV_DIM,
        out_channels=stsn.OUT_CHANNELS,
        num_convs=stsn.NUM_CONVS,
        deformable_groups=stsn.DEFORMABLE_GROUPS,
    )


def _check_inputs(ref, support, offsets):
    if support.dim() != 5 or support.shape[0] != ref.shape[0] or support.shape[2:] != ref.shape[1:]:
        raise ValueError(
            f"support maps must be (B, S, C, H, W) with (B, C, H, W) = {tuple(ref.shape)} of the "
            f"reference, got {tuple(support.shape)}"
        )
    if offsets.shape != support.shape[:2]:
        raise ValueError(
            f"offsets must be (B, S) = {tuple(support.shape[:2])}, got {tuple(offsets.shape)}"
        )
