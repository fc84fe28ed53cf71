"""
The contract of temporal modules: the :class:`TemporalModule` base (recurrent state cleared at
every video), :class:`TemporalAggregation` (what plugs into :class:`VideoRCNN`) and its registry.
"""

from typing import Dict, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from ..frames import FrameInfo

__all__ = [
    "TEMPORAL_AGGREGATION_REGISTRY",
    "TemporalModule",
    "TemporalAggregation",
    "build_temporal_aggregation",
]

TEMPORAL_AGGREGATION_REGISTRY = Registry("TEMPORAL_AGGREGATION")
TEMPORAL_AGGREGATION_REGISTRY.__doc__ = """
Registry of temporal aggregation modules: subclasses of :class:`TemporalAggregation` that turn
the backbone map of a reference frame and those of its support frames into the map that
:class:`vod_d2.modeling.VideoRCNN`'s heads read.

The registered object is called with ``obj(cfg, input_shape)``, where ``input_shape`` is the
:class:`ShapeSpec` of the aggregated backbone map (one of ``cfg.MODEL.VIDEO.IN_FEATURES``: a
model that aggregates several maps builds an instance for each, all computing with the first
one's weights, see :mod:`vod_d2.modeling.temporal.levels`), and must return a
:class:`TemporalAggregation`.
"""


class TemporalModule(nn.Module):
    """
    Base of every module that may carry state from frame to frame of a video (online memories).

    A video meta-architecture calls :meth:`reset` on every ``TemporalModule`` it holds before
    the first frame of each test video (:meth:`VideoDetector.reset`), so a video's state never
    reaches the next one. Stateless modules keep the default, which has nothing to forget;
    stateful ones keep their state in attributes that :meth:`reset` clears.
    """

    def reset(self):
        """Forget the state of the current video (default: stateless)."""


class TemporalAggregation(TemporalModule):
    """
    Base of the modules of ``TEMPORAL_AGGREGATION_REGISTRY``.

    A frame's encodings are computed once, when the frame arrives (each frame of a training
    batch; each test frame as it enters the meta-architecture's cache), and are then passed to
    every window the frame is in:

    * :meth:`encode` maps the frame's backbone map to a dict of named per-frame tensors
      (default ``{"feature": feature}``); put there whatever does not depend on the window
      (e.g. STMN's input projections), so it is not recomputed for every window.
    * :attr:`support_keys` names the encodings a frame contributes as a support frame; the
      meta-architecture keeps only these once the frame's own detection is done.
    * :meth:`forward` fuses a reference frame's encodings with those of its support frames.
    * :meth:`output_shape` is the fused map's shape (default: the input's).
    """

    #: Encodings a support frame contributes (a subset of :meth:`encode`'s keys).
    support_keys: Sequence[str] = ("feature",)

    def __init__(self, input_shape: ShapeSpec):
        """
        Args:
            input_shape: shape of the backbone map the module aggregates.
        """
        super().__init__()
        self.input_shape = input_shape

    def encode(self, feature: torch.Tensor, frames: Sequence[FrameInfo]) -> Dict[str, torch.Tensor]:
        """
        Per-frame, window-independent encodings.

        Args:
            feature (Tensor): (N, C, H, W) backbone maps of N frames.
            frames: the N frames' metadata (index in the video, length, key frame).

        Returns:
            dict[str, Tensor]: named (N, ...) tensors.
        """
        return {"feature": feature}

    def forward(
        self,
        ref: Dict[str, torch.Tensor],
        support: Dict[str, torch.Tensor],
        offsets: torch.Tensor,
        frames: Sequence[FrameInfo],
    ) -> torch.Tensor:
        """
        Args:
            ref: :meth:`encode` of B reference frames, each (B, ...).
            support: the :attr:`support_keys` encodings of their S support frames, each
                (B, S, ...). S may be 0. During training the support frames follow
                ``cfg.INPUT.VIDEO.TRAIN_SAMPLING``; at test time they are the meta-architecture's
                window, clamped to the video (border frames repeat the first/last frame).
            offsets (Tensor): (B, S) int64 frame offsets ``support_frame - reference_frame``.
            frames: metadata of the B reference frames.

        Returns:
            Tensor: (B, C_out, H, W) with ``C_out == output_shape().channels``.
        """
        raise NotImplementedError

    def output_shape(self) -> ShapeSpec:
        """Shape of :meth:`forward`'s output (same stride as the input)."""
        return self.input_shape


def build_temporal_aggregation(cfg, input_shape: ShapeSpec) -> TemporalAggregation:
    """Build the module named by ``cfg.MODEL.VIDEO.AGGREGATION`` for a map of ``input_shape``."""
    name = cfg.MODEL.VIDEO.AGGREGATION
    module = TEMPORAL_AGGREGATION_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(module, TemporalAggregation):
        raise TypeError(
            f"MODEL.VIDEO.AGGREGATION={name!r} built a {type(module).__name__}, which is not a "
            "vod_d2.modeling.temporal.TemporalAggregation"
        )
    return module
