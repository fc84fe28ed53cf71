"""
The exportable step of :class:`~vod_d2.modeling.VideoRCNN`: a window of past frames.

State: the last L frames' cached encodings, L the window's reach into the past (``stride *
before`` of ``MODEL.VIDEO.TEST_WINDOW`` (before, 0) at ``TEST_STRIDE``), oldest first:

* ``window.<map>.<encoding>`` (L, ...): each encoding a frame contributes as a support frame
  (the module's ``support_keys``, or STMN's features and forward projections), per aggregated
  backbone map;
* ``window.frames`` (L,) int64: the frame index in each slot, -1 for an empty one. The frame
  arriving is one after the last slot's.

Frame t reads frame ``max(t + o, 0)`` for each window offset o (clamped at the video's start
as :class:`~vod_d2.modeling.frames.WindowSupport` clamps it), and its own encodings enter the
window as the oldest slot leaves. A window without past frames (a single-frame detector, SSN)
has no state. Windows reaching ahead (offline STSN, STMN) are exported as their causal variant
(:func:`vod_d2.make_online`).

The temporal modules run as in eager inference: a stateless aggregation (STSN, SSN, the
single frame, a module of your own whose ``reset`` keeps the default) is called with the
gathered window, and STMN's memories are computed from the window's encodings by the same cell
steps, alignments and BN* statistics as its test stream (:class:`_STMNWindow`).
"""

from typing import Dict, List, Tuple

import torch

from ..layers import local_aggregate
from ..modeling.frames import FrameInfo
from ..modeling.temporal import STMNAggregation
from .heads import roi_num_detections
from .state import FRAME_INDEX_DOC, StateTensor
from .step import StreamingStep, frame_index

__all__ = ["WindowStep"]

# What an exported step tells a temporal module about the frame: nothing it could branch on.
_FRAME = [FrameInfo(0)]


class _Aggregation:
    """A stateless :class:`~vod_d2.modeling.temporal.TemporalAggregation` on a gathered window."""

    def __init__(self, module):
        self.module = module
        self.cached_keys = tuple(module.support_keys)

    def encode(self, feature: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.module.encode(feature, _FRAME)

    def aggregate(self, ref, window, offsets) -> torch.Tensor:
        return self.module(ref, window, offsets, _FRAME)


class _STMNWindow:
    """
    :class:`~vod_d2.modeling.temporal.STMNAggregation` at test time, from the window's cached
    features and forward projections instead of its test stream's chains: the forward memory
    visits the window's distinct frames oldest first and ends on the frame; the backward memory
    (the causal window has no future frame) is the frame's alone. Every step is the stream's:
    the cell on the frame's projection and the previous memory aligned by MatchTrans
    coefficients of the two frames' features, the first step from no memory, and the stream's
    cache dtype rounding.
    """

    def __init__(self, module: STMNAggregation):
        self.module = module
        self.forward_memory = module.forward_memory
        self.backward_memory = module.backward_memory
        self.aligner = module.forward_memory.aligner
        keys = ("feature",) if self.aligner is not None else ()
        self.cached_keys = keys + ("forward_projection",)

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        """The stream's round trip through its cache dtype (STMNTestStream._store)."""
        dtype = self.module.test_cache_dtype
        if dtype is None or tensor.dtype == dtype:
            return tensor
        stored = tensor.to(dtype)
        return torch.where(torch.isfinite(stored).all(), stored.to(tensor.dtype), tensor)

    def encode(self, feature: torch.Tensor) -> Dict[str, torch.Tensor]:
        encoded = {
            "feature": feature,
            "forward_projection": self.forward_memory.cell.project(feature),
        }
        directions = [self.forward_memory]
        if self.backward_memory is not None:
            projection = self.backward_memory.cell.project(feature)
            encoded["backward_projection"] = self._stored(projection)
            directions.append(self.backward_memory)
        if self.module.residual_gate is not None:
            encoded["static"] = torch.cat(
                [d.cell.static_feature_of(feature) for d in directions], dim=1
            )
        return encoded

    def aggregate(self, ref, window, offsets) -> torch.Tensor:
        cell = self.forward_memory.cell
        memory = torch.zeros_like(cell(ref["forward_projection"], None))
        started = torch.zeros((), dtype=torch.bool, device=memory.device)
        previous = ref["feature"]
        num = offsets.shape[1]
        for p in range(num + 1):
            if p < num:
                feature = window["feature"][:, p] if self.aligner is not None else None
                projection = window["forward_projection"][:, p]
                # A clamped offset repeats its predecessor's frame (the video's first): one step.
                visits = offsets[0, p] != 0
                if p > 0:
                    visits = visits & (offsets[0, p] != offsets[0, p - 1])
            else:
                feature, projection = ref["feature"], ref["forward_projection"]
                visits = torch.ones((), dtype=torch.bool, device=memory.device)
            aligned = memory
            if self.aligner is not None:
                coefficients = self.aligner.transform_coefficients(feature, previous)
                aligned = local_aggregate(coefficients.to(memory.dtype), memory, self.aligner.k)
            stepped = torch.where(started, cell(projection, aligned), cell(projection, None))
            memory = torch.where(visits, stepped, memory)
            if self.aligner is not None:
                previous = torch.where(visits, feature, previous)
            started = started | visits
        memories = [self._stored(memory)]
        if self.backward_memory is not None:
            memories.append(self.backward_memory.cell(ref["backward_projection"], None))
        return self.module._gated(ref.get("static"), torch.cat(memories, dim=1))


def _adapter(module):
    if isinstance(module, STMNAggregation):
        return _STMNWindow(module)
    return _Aggregation(module)


class WindowStep(StreamingStep):
    """
    The step of a :class:`~vod_d2.modeling.VideoRCNN` whose window lies in the past (see the
    module docstring for its state).
    """

    def __init__(self, model):
        """
        Args:
            model: a ``VideoRCNN`` in eval mode, with a causal window (:func:`vod_d2.make_online`).
        """
        super().__init__(model)
        offsets = tuple(model.support_policy.offsets)
        if any(o > 0 for o in offsets):
            raise ValueError(
                f"the window {offsets} reads frames ahead: export the causal variant "
                "(vod_d2.make_online(cfg))"
            )
        self.length = -min(offsets, default=0)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), False)
        self.windows: List[Tuple[str, object]] = [
            (name, _adapter(module)) for name, module in model._aggregations()
        ]

    @property
    def num_detections(self) -> int:
        return roi_num_detections(self.model)

    def state_tensors(self, image: torch.Tensor) -> List[Tuple[StateTensor, torch.Tensor]]:
        if not self.length:
            return []
        features = self.model.backbone(self.preprocess(image))
        tensors = []
        for name, window in self.windows:
            encoded = window.encode(features[name])
            for key in window.cached_keys:
                value = encoded[key].expand(self.length, *encoded[key].shape[1:])
                doc = f"{key} of the last {self.length} frames on map {name!r}, oldest first"
                spec = StateTensor(
                    f"window.{name}.{key}", tuple(value.shape), value.dtype, 0.0, doc
                )
                tensors.append((spec, value))
        frames = self.offsets.new_zeros((self.length,))
        spec = StateTensor("window.frames", (self.length,), torch.int64, -1, FRAME_INDEX_DOC)
        return tensors + [(spec, frames)]

    def forward(self, image: torch.Tensor, *state: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.preprocess(image)
        features = self.model.backbone(x)
        new_state = []
        if self.length:
            frames = state[-1]
            t = frame_index(frames)
            # Slot L + max(o, -t) of [window, frame] holds frame max(t + o, 0).
            clamped = torch.maximum(self.offsets, -t)
            slots = clamped + self.length
        cached = iter(state)
        aggregated = {}
        for name, window in self.windows:
            encoded = window.encode(features.pop(name))
            gathered = {}
            for key in window.cached_keys:
                extended = torch.cat([next(cached), encoded[key]])
                gathered[key] = extended.index_select(0, slots)[None]
                new_state.append(extended[1:])
            if not self.length:
                clamped = self.offsets
                gathered = {
                    key: encoded[key].new_empty((1, 0, *encoded[key].shape[1:]))
                    for key in window.cached_keys
                }
            aggregated[name] = window.aggregate(encoded, gathered, clamped[None])
        if self.length:
            new_state.append(torch.cat([frames[1:], t[None]]))
        detections = self.rcnn_detections(x, image.shape[-2:], {**features, **aggregated})
        return (*detections, *new_state)
