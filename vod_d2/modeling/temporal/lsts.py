"""
The building blocks of LSTS (Jiang et al., "Learning Where to Focus for Efficient Video Object
Detection", ECCV 2020): learnable spatio-temporal sampling (§3.2), the Sparsely Recursive Feature
Updating of key frames (SRFU, §3.3) and the Dense Feature Aggregation of non-key frames (DFA,
§3.4), with the Transform unit (§4.2) and the quality-aware aggregation unit
(:mod:`.quality_aggregation`).

What the paper leaves open follows the authors' MXNet code (``jiangzhengkai/LSTS``,
``lsts_rfcn/symbols/lsts_network_gaussian.py`` unless named otherwise):

* ``align_conv_feat_dynamic``: f(.) and g(.) are 1x1 convs to 256 channels with a bias and no
  activation, f on the map sampled from, g on the frame aligned to, one pair per use (SRFU's and
  DFA's); the similarity is the plain dot product of the embeddings, normalised over the N
  points by a softmax (not Eq. 3's sum); the sampled map is the un-embedded feature (Eq. 4).
* ``get_train_symbol_impression``: one (N, 2) set of locations, ``init_offset``, serves both
  SRFU and DFA; its learning rate is the base one times ``lr_mult = 10000 * TRAIN.lr`` (2.5 at
  the authors' lr of 2.5e-4), and MXNet gives it no weight decay (only ``*_weight`` and
  ``*_gamma`` parameters decay by default).
* ``init_weight`` and ``experiments/lsts_rfcn/cfgs/lsts_*.yaml``: N = 40 Gaussian locations
  (zero mean, identity covariance), or 81 on the 9x9 integer grid ("uniform", neighbourhood 4);
  the embeddings and the Transform unit are initialised from N(0, 0.01) with zero biases.
* ``low2high``: the Transform unit is 1x1x256, ReLU, 3x3x256, ReLU, 3x3x1024 (no activation
  after the last conv), where §4.2 says 3x3x256, 3x3x512, 3x3x1024; the widths and kernels are
  configurable and default to the paper's, with the code's activations.
* ``get_key_test_symbol_impression`` (``TEST.MEMORY_UPDATE_RATIO: 1.0``): the key frame's
  task feature *is* the new memory (Eq. 7's output); ``get_first_test_symbol_impression``: the
  first key frame of a video keeps its own feature as task feature and memory.

Offsets are (dy, dx) here and (dx, dy) in the authors' code (``lib/ops/bilinear_sample_k.cu``
reads ``offset[2k]`` as x): an MXNet ``init_offset`` converts to ``sampling.offsets`` as
``init_offset[:, [1, 0]]``.
"""

from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from torch import nn

from vod_d2.layers import DeformableSimilaritySampling

from ..frames import LIGHT
from .build import TemporalModule
from .gate import GateSpec, maybe_gate
from .key_frame import KEY_FRAME_REGISTRY, KeyFrameModule
from .quality_aggregation import QualityAwareAggregation

__all__ = [
    "LSTS",
    "TransformUnit",
    "SparseRecursiveFeatureUpdate",
    "DenseFeatureAggregation",
    "LSTSFeatureFusion",
    "LSTSKeyFrames",
    "LOCATIONS_PARAMETER",
    "lsts_optimizer_overrides",
]

# Name of the sampling locations' parameter (DeformableSimilaritySampling.offsets), the key of
# detectron2's ``get_default_optimizer_params(overrides=...)``.
LOCATIONS_PARAMETER = "offsets"

AGGREGATIONS = ("none", "fixed", "quality")


def _normal_init(conv: nn.Conv2d) -> None:
    """The authors' ``init_weight``: N(0, 0.01) weights, zero bias."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


# Layouts of the aggregation unit's quality net: §4.2's text (3x3x256, 1x1x16, 1x1x1 with
# ReLUs) and the authors' ``quality_network`` (1x1x256, 3x3x16, 3x3x1, no activation), which is
# also the one that matches the paper's parameter count (Table 1: 64.5 M for R-101).
QUALITY_LAYOUTS = {
    "paper": dict(kernel_sizes=(3, 1, 1), activation=True),
    "authors": dict(kernel_sizes=(1, 3, 3), activation=False),
}


def _aggregation(
    mode: str, channels: int, key: str, layout: str = "paper", zero_init: bool = False
) -> Optional[QualityAwareAggregation]:
    if mode not in AGGREGATIONS:
        raise ValueError(f"{key} must be one of {AGGREGATIONS}, got {mode!r}")
    if layout not in QUALITY_LAYOUTS:
        raise ValueError(
            f"MODEL.LSTS.QUALITY_LAYOUT must be one of {tuple(QUALITY_LAYOUTS)}, got {layout!r}"
        )
    if mode == "none":
        return None
    return QualityAwareAggregation(
        channels, quality=mode == "quality", zero_init=zero_init, **QUALITY_LAYOUTS[layout]
    )


class LSTS(nn.Module):
    """
    Learnable spatio-temporal sampling of a support map F_t for a target frame t+k (§3.2).

    At every target position p0 the support is sampled at the N locations p0 + dp_n shared by all
    positions (Eq. 1); the weights are the normalised dot products of f(F_t)(p0 + dp_n) and
    g(F_{t+k})(p0) (Eq. 2, 5, and Eq. 3 or softmax), and the output is the weighted sum of
    F_t(p0 + dp_n) (Eq. 4). The locations are learned through the sampling (Eq. 6).

    The locations and the normalisation live in the :class:`DeformableSimilaritySampling` given
    to :meth:`forward`, so one set of locations can serve several LSTS (SRFU and DFA share it).
    """

    def __init__(self, support_channels: int, target_channels: int, embed_channels: int = 256):
        """
        Args:
            support_channels: channels C of the sampled map F_t.
            target_channels: channels C' of the target frame's map F_{t+k}.
            embed_channels: width of the embeddings f and g (authors: 256).
        """
        super().__init__()
        self.embed_support = Conv2d(support_channels, embed_channels, 1)  # f
        self.embed_target = Conv2d(target_channels, embed_channels, 1)  # g
        _normal_init(self.embed_support)
        _normal_init(self.embed_target)

    def forward(
        self,
        support: torch.Tensor,
        target: torch.Tensor,
        sampling: DeformableSimilaritySampling,
        embedded_support: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            support (Tensor): (B, C, H, W) map F_t sampled from.
            target (Tensor): (B, C', H, W) map F_{t+k} of the frame aligned to.
            sampling: the N locations and the normalisation.
            embedded_support (Tensor or None): (B, E, H, W) f(F_t) if already computed (a
                key-frame memory read by every frame of its segment), else computed here.

        Returns:
            Tensor: (B, C, H, W) F'_{t+k}, F_t aligned to frame t+k (Eq. 4).
        """
        if embedded_support is None:
            embedded_support = self.embed_support(support)
        return sampling(self.embed_target(target), embedded_support, support)


class TransformUnit(nn.Sequential):
    """
    Lifts a non-key frame's low-level feature towards the high-level one (§4.2): randomly
    initialised convs with a ReLU after each but the last (the authors' ``low2high``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dims: Sequence[int] = (256, 512),
        kernel_sizes: Sequence[int] = (3, 3, 3),
    ):
        """
        Args:
            in_channels: channels of the low-level feature.
            out_channels: channels of the high-level feature (paper: 1024).
            dims: widths of all convs but the last (paper: 256, 512; authors' code: 256, 256).
            kernel_sizes: kernel of every conv, one more than ``dims`` (paper: 3, 3, 3;
                authors' code: 1, 3, 3).
        """
        if len(kernel_sizes) != len(dims) + 1:
            raise ValueError(
                f"TransformUnit: {len(dims) + 1} convs need {len(dims) + 1} kernel sizes "
                f"(MODEL.LSTS.TRANSFORM_KERNEL_SIZES), got {tuple(kernel_sizes)}"
            )
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"TransformUnit: kernel sizes must be odd, got {tuple(kernel_sizes)}")
        widths = [in_channels, *dims, out_channels]
        layers = []
        for i, k in enumerate(kernel_sizes):
            conv = Conv2d(widths[i], widths[i + 1], k, padding=k // 2)
            _normal_init(conv)
            layers.append(conv)
            if i < len(kernel_sizes) - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SparseRecursiveFeatureUpdate(nn.Module):
    """
    SRFU (§3.3, Eq. 7): the memory of the previous key frame, aligned to the new key frame by
    LSTS, is fused with the new key frame's feature; the result is the new memory and the key
    frame's task feature. Without a memory (first key frame of a video) the feature is kept.

    ``update`` selects the rows of Table 2: "quality" (quality-aware memory update, (c)-(g)),
    "fixed" (both weights 0.5, (b)) or "none" (sparse deep features only: the key frame's
    feature alone, (a)). With ``identity_init`` (:mod:`.gate`) the fusion ends in a residual
    gate to the key frame's own feature that starts closed, and the quality net starts at equal
    weights: every key frame starts with the single-frame detector's feature.
    """

    def __init__(
        self,
        channels: int,
        *,
        embed_channels: int = 256,
        update: str = "quality",
        quality_layout: str = "paper",
        identity_init: bool = False,
        gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            channels: channels C of the key-frame features and of the memory.
            embed_channels: width of LSTS's embeddings.
            update: "quality", "fixed" or "none".
            quality_layout: the quality net's layout, "paper" or "authors".
            identity_init: start at the key frame's feature (``MODEL.VIDEO.IDENTITY_INIT``).
            gate: the residual gate with ``identity_init`` (``MODEL.VIDEO.GATE``).
        """
        super().__init__()
        self.aggregation = _aggregation(
            update, channels, "MODEL.LSTS.MEMORY_UPDATE", quality_layout, identity_init
        )
        self.lsts = (
            LSTS(channels, channels, embed_channels) if self.aggregation is not None else None
        )
        self.residual_gate = maybe_gate(
            identity_init and self.aggregation is not None, channels, gate
        )

    def forward(
        self,
        feature: torch.Tensor,
        memory: Optional[torch.Tensor],
        sampling: DeformableSimilaritySampling,
    ) -> torch.Tensor:
        """
        Args:
            feature (Tensor): (B, C, H, W) high-level feature F_{t1} of the new key frame.
            memory (Tensor or None): (B, C, H, W) memory F^memory_{t0} of the previous key frame.
            sampling: LSTS's locations.

        Returns:
            Tensor: (B, C, H, W) F^memory_{t1}, also the key frame's task feature.
        """
        if memory is None or self.aggregation is None:
            return feature
        aligned = self.lsts(memory, feature, sampling)
        fused = self.aggregation([feature, aligned])
        return fused if self.residual_gate is None else self.residual_gate(feature, fused)


class DenseFeatureAggregation(nn.Module):
    """
    DFA (§3.4, Eq. 8): on a non-key frame, the Transform unit lifts the low-level feature to
    F^high, LSTS aligns the key-frame memory to it, and the aggregation unit fuses the two into
    the task feature.

    The switches give the rows of Table 2: ``aggregation`` "none" (the aligned memory alone,
    (a)-(c)), "fixed" (weights 0.5, (d), (e)) or "quality" ((f), (g)); ``transform`` on in (e)
    and (g). Without the Transform unit, the low-level feature itself is LSTS's target and, when
    aggregated, must be as wide as the memory.

    With ``identity_init`` (:mod:`.gate`) the fusion ends in a residual gate to the aligned
    memory that starts closed: a non-key frame starts with the key frame's feature propagated
    to it (Table 2 (a)-(c)'s output, Deep Feature Flow's start), not with half of it fused with
    a Transform output that starts at about zero (N(0, 0.01): a relative error of 0.8 and half
    the norm); the Transform unit and the quality net then learn as the gate opens.
    """

    def __init__(
        self,
        low_channels: int,
        channels: int,
        *,
        embed_channels: int = 256,
        aggregation: str = "quality",
        transform: bool = True,
        transform_dims: Sequence[int] = (256, 512),
        transform_kernel_sizes: Sequence[int] = (3, 3, 3),
        quality_layout: str = "paper",
        identity_init: bool = False,
        gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            low_channels: channels of the low-level feature F^low.
            channels: channels C of the memory and of the task feature.
            embed_channels: width of LSTS's embeddings.
            aggregation: "quality", "fixed" or "none".
            transform: lift F^low with a :class:`TransformUnit`.
            transform_dims, transform_kernel_sizes: see :class:`TransformUnit`.
            quality_layout: the quality net's layout, "paper" or "authors".
            identity_init: start at the aligned memory (``MODEL.VIDEO.IDENTITY_INIT``).
            gate: the residual gate with ``identity_init`` (``MODEL.VIDEO.GATE``).
        """
        super().__init__()
        self.aggregation = _aggregation(
            aggregation, channels, "MODEL.LSTS.NON_KEY_AGGREGATION", quality_layout, identity_init
        )
        self.transform = (
            TransformUnit(low_channels, channels, transform_dims, transform_kernel_sizes)
            if transform
            else None
        )
        target_channels = channels if transform else low_channels
        if self.aggregation is not None and target_channels != channels:
            raise ValueError(
                f"DenseFeatureAggregation: without the Transform unit the low-level feature "
                f"({low_channels} channels) is fused with the memory ({channels} channels) and "
                "must be as wide (MODEL.LSTS.TRANSFORM, MODEL.LSTS.NON_KEY_AGGREGATION)"
            )
        self.lsts = LSTS(channels, target_channels, embed_channels)
        self.residual_gate = maybe_gate(
            identity_init and self.aggregation is not None, channels, gate
        )

    def forward(
        self,
        low: torch.Tensor,
        memory: torch.Tensor,
        sampling: DeformableSimilaritySampling,
        embedded_memory: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            low (Tensor): (B, C_low, H, W) low-level feature F^low_{t1+k} of the non-key frame.
            memory (Tensor): (B, C, H, W) memory F^memory_{t1} of the last key frame.
            sampling: LSTS's locations.
            embedded_memory (Tensor or None): (B, E, H, W) ``self.lsts.embed_support(memory)``
                if already computed (once per key frame), else computed here.

        Returns:
            Tensor: (B, C, H, W) task feature F^task_{t1+k}.
        """
        high = self.transform(low) if self.transform is not None else low
        aligned = self.lsts(memory, high, sampling, embedded_memory)
        if self.aggregation is None:
            return aligned
        fused = self.aggregation([high, aligned])
        return fused if self.residual_gate is None else self.residual_gate(aligned, fused)


class LSTSFeatureFusion(TemporalModule):
    """
    SRFU and DFA with the N sampling locations they share, for a key-frame meta-architecture.

    Stateless calls express the training graph (any frame roles): :meth:`update_memory` (SRFU)
    and :meth:`propagate` (DFA). The stateful calls run a video online, one frame at a time:
    :meth:`key_frame` on the heavy feature of a key frame updates the memory (and DFA's
    embedding of it, which the segment's frames share), :meth:`non_key_frame` on the low-level
    feature of another frame reads it, and :meth:`reset` (which :class:`VideoDetector` calls on
    every :class:`TemporalModule`) clears it before every video. The memory keeps its autograd
    graph, so a training sample may also be driven through the stateful calls (reset before
    each sample).

    The locations are ``sampling.offsets``, (N, 2) in (dy, dx) order; the Table 4 ablation
    freezes them (``learn_locations=False``). Their learning rate and weight decay are
    :func:`lsts_optimizer_overrides`.
    """

    @configurable
    def __init__(
        self,
        *,
        low_channels: int,
        channels: int,
        num_points: int = 40,
        init: str = "gaussian",
        learn_locations: bool = True,
        normalization: str = "softmax",
        embed_channels: int = 256,
        memory_update: str = "quality",
        non_key_aggregation: str = "quality",
        transform: bool = True,
        transform_dims: Sequence[int] = (256, 512),
        transform_kernel_sizes: Sequence[int] = (3, 3, 3),
        quality_layout: str = "paper",
        identity_init: bool = False,
        gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            low_channels: channels of the light path's low-level feature.
            channels: channels C of the heavy path's feature, the memory and the task features.
            num_points: N sampling locations (authors: 40 Gaussian, 81 on a grid).
            init: "gaussian" (zero mean, unit variance) or "grid" (the paper's "uniform": a
                sqrt(N) x sqrt(N) neighbourhood with unit spacing).
            learn_locations: learn the locations (Eq. 6); False keeps them at their init.
            normalization: "softmax" (authors) or "sum" (Eq. 3) over the N similarities.
            embed_channels: width of the embeddings f and g (authors: 256).
            memory_update: SRFU's "quality", "fixed" or "none".
            non_key_aggregation: DFA's "quality", "fixed" or "none".
            transform: DFA lifts the low-level feature with the Transform unit.
            transform_dims, transform_kernel_sizes: see :class:`TransformUnit`.
            quality_layout: the aggregation units' quality net, "paper" or "authors"
                (:data:`QUALITY_LAYOUTS`).
            identity_init: SRFU and DFA start at the key frame's feature and at the propagated
                memory (``MODEL.VIDEO.IDENTITY_INIT``, :mod:`.gate`).
            gate: their residual gates (``MODEL.VIDEO.GATE``).
        """
        super().__init__()
        self.sampling = DeformableSimilaritySampling(num_points, init, normalization)
        self.sampling.offsets.requires_grad_(learn_locations)
        self.srfu = SparseRecursiveFeatureUpdate(
            channels,
            embed_channels=embed_channels,
            update=memory_update,
            quality_layout=quality_layout,
            identity_init=identity_init,
            gate=gate,
        )
        self.dfa = DenseFeatureAggregation(
            low_channels,
            channels,
            embed_channels=embed_channels,
            aggregation=non_key_aggregation,
            transform=transform,
            transform_dims=transform_dims,
            transform_kernel_sizes=transform_kernel_sizes,
            quality_layout=quality_layout,
            identity_init=identity_init,
            gate=gate,
        )
        self._memory: Optional[torch.Tensor] = None
        self._embedded_memory: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, cfg, low_shape: ShapeSpec, shape: ShapeSpec):
        """
        Args:
            low_shape: shape of the light path's output (``SplitResNet.low_level_shape()``).
            shape: shape of the heavy path's feature that LSTS fuses.
        """
        c = cfg.MODEL.LSTS
        return {
            "low_channels": low_shape.channels,
            "channels": shape.channels,
            "num_points": c.NUM_POINTS,
            "init": c.INIT,
            "learn_locations": c.LEARN_LOCATIONS,
            "normalization": c.NORMALIZATION,
            "embed_channels": c.EMBED_CHANNELS,
            "memory_update": c.MEMORY_UPDATE,
            "non_key_aggregation": c.NON_KEY_AGGREGATION,
            "transform": c.TRANSFORM,
            "transform_dims": tuple(c.TRANSFORM_DIMS),
            "transform_kernel_sizes": tuple(c.TRANSFORM_KERNEL_SIZES),
            "quality_layout": c.QUALITY_LAYOUT,
            "identity_init": cfg.MODEL.VIDEO.IDENTITY_INIT,
            "gate": GateSpec.from_config(cfg),
        }

    def update_memory(
        self, feature: torch.Tensor, memory: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        SRFU (Eq. 7).

        Args:
            feature (Tensor): (B, C, H, W) heavy feature of a key frame.
            memory (Tensor or None): (B, C, H, W) memory of the previous key frame; None for
                the first key frame of a video.

        Returns:
            Tensor: (B, C, H, W) the new memory, which is also the key frame's task feature.
        """
        if memory is not None:
            self._check_memory(memory, feature)
        return self.srfu(feature, memory, self.sampling)

    def embed_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """
        DFA's embedding f of a key frame's memory, the same for every non-key frame of its
        segment: computed once, it is given to :meth:`propagate`.

        Args:
            memory (Tensor): (B, C, H, W) memory of a key frame.

        Returns:
            Tensor: (B, E, H, W) f(memory).
        """
        return self.dfa.lsts.embed_support(memory)

    def propagate(
        self,
        low: torch.Tensor,
        memory: torch.Tensor,
        embedded_memory: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        DFA (Eq. 8).

        Args:
            low (Tensor): (B, C_low, H, W) low-level feature of a non-key frame.
            memory (Tensor): (B, C, H, W) memory of the last key frame.
            embedded_memory (Tensor or None): (B, E, H, W) :meth:`embed_memory` of ``memory``,
                or None to compute it here.

        Returns:
            Tensor: (B, C, H, W) the non-key frame's task feature.
        """
        self._check_memory(memory, low)
        return self.dfa(low, memory, self.sampling, embedded_memory)

    @property
    def memory(self) -> Optional[torch.Tensor]:
        """(B, C, H, W) memory of the current video's last key frame, or None."""
        return self._memory

    @property
    def embedded_memory(self) -> Optional[torch.Tensor]:
        """(B, E, H, W) :meth:`embed_memory` of :attr:`memory`, or None."""
        return self._embedded_memory

    def reset(self) -> None:
        """Forget the memory: call before the first frame of every video."""
        self._memory = None
        self._embedded_memory = None

    def key_frame(self, feature: torch.Tensor) -> torch.Tensor:
        """
        Args:
            feature (Tensor): (B, C, H, W) heavy feature of the video's next key frame.

        Returns:
            Tensor: (B, C, H, W) its task feature, now also the memory.
        """
        self._memory = self.update_memory(feature, self._memory)
        self._embedded_memory = self.embed_memory(self._memory)
        return self._memory

    def non_key_frame(self, low: torch.Tensor) -> torch.Tensor:
        """
        Args:
            low (Tensor): (B, C_low, H, W) low-level feature of a non-key frame.

        Returns:
            Tensor: (B, C, H, W) its task feature; the memory is unchanged.
        """
        if self._memory is None:
            raise RuntimeError(
                "LSTSFeatureFusion.non_key_frame: no key frame since the last reset(); a video "
                "must start with a key frame"
            )
        return self.propagate(low, self._memory, self._embedded_memory)

    @staticmethod
    def _check_memory(memory: torch.Tensor, frame: torch.Tensor) -> None:
        if (
            memory.dim() != 4
            or frame.dim() != 4
            or ((memory.shape[0], *memory.shape[2:]) != (frame.shape[0], *frame.shape[2:]))
        ):
            raise ValueError(
                f"LSTSFeatureFusion: memory {tuple(memory.shape)} and frame feature "
                f"{tuple(frame.shape)} must be (B, C, H, W) maps of one batch and size "
                "(reset() at every new video)"
            )


def lsts_optimizer_overrides(cfg) -> Dict[str, Dict[str, float]]:
    """
    Learning rate and weight decay of the sampling locations, as detectron2's
    ``get_default_optimizer_params(model, ..., overrides=lsts_optimizer_overrides(cfg))`` takes
    them: ``SOLVER.BASE_LR * MODEL.LSTS.LOCATIONS_LR_MULT`` and
    ``MODEL.LSTS.LOCATIONS_WEIGHT_DECAY`` for every parameter named :data:`LOCATIONS_PARAMETER`.
    The LR scheduler scales this group like the others.
    """
    lr = cfg.SOLVER.BASE_LR * cfg.MODEL.LSTS.LOCATIONS_LR_MULT
    return {LOCATIONS_PARAMETER: {"lr": lr, "weight_decay": cfg.MODEL.LSTS.LOCATIONS_WEIGHT_DECAY}}


@KEY_FRAME_REGISTRY.register()
class LSTSKeyFrames(KeyFrameModule):
    """
    LSTS in a key-frame detector (:class:`vod_d2.modeling.KeyFrameRCNN`): a key frame's heavy
    feature updates the memory by SRFU, and that memory is its task feature (the authors'
    ``MEMORY_UPDATE_RATIO`` 1); a non-key frame's payload is its low-level feature, which DFA
    fuses with its key frame's memory. A key frame's payload also holds DFA's embedding of the
    memory (``"embedded"``), computed once for the frames of its segment.
    """

    light_kind = LIGHT
    support_keys = ("task", "embedded")

    def __init__(self, cfg, feature_shape: ShapeSpec, low_shape: Optional[ShapeSpec]):
        """
        Args:
            cfg: config with ``MODEL.LSTS``.
            feature_shape: the heavy feature's shape (memory and task features share it).
            low_shape: the light path's output shape (the split backbone's).
        """
        super().__init__()
        if low_shape is None:
            raise ValueError(
                "LSTS needs a light path: MODEL.BACKBONE.NAME must split the ResNet "
                "(build_split_resnet_backbone or build_split_rfcn_resnet_backbone)"
            )
        self.fusion = LSTSFeatureFusion(cfg, low_shape, feature_shape)
        self._shape = feature_shape
        self._overrides = lsts_optimizer_overrides(cfg)

    def key_frame(self, feature, images, frames):
        memory = self.fusion.key_frame(feature)
        return {"task": memory, "embedded": self.fusion.embedded_memory}

    def non_key_frame(self, light, images, frames):
        return {"low": light}

    def propagate(self, target, key):
        return self.fusion.propagate(target["low"], key["task"], key["embedded"])

    def output_shape(self) -> ShapeSpec:
        return self._shape

    def optimizer_overrides(self) -> Dict[str, Dict[str, float]]:
        """The locations' learning rate and weight decay (:func:`lsts_optimizer_overrides`)."""
        return self._overrides
