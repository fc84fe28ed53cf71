"""
The exportable step of :class:`~vod_d2.modeling.sparse_rcnn.SparseRCNN` (no state) and of
:class:`~vod_d2.modeling.sparse_rcnn.SparseVOD`'s causal variant (``MODEL.SPARSEVOD.ONLINE``:
a uniform sample of past frames as support; whole-video support reads frames ahead).

SparseVOD's state, T = ``MODEL.SPARSEVOD.TEST_NUM_SUPPORT`` slots:

* ``support.<map>`` (T, d, h, w): the FPN maps of the frames in the sample (with TFE);
* ``support.objects`` (T, num_stages, N, d): their object features of every stage (with SPFA);
* ``support.frames`` (T,) int64: the frame index in each slot, -1 for an empty one;
* ``frame_index`` () int64: the index of the frame arriving.

Which past frames the sample keeps is reservoir sampling with NumPy's generator
(:class:`~vod_d2.modeling.frames.GlobalSupport`'s online plan), which a graph cannot
reproduce: the step takes it as an input, ``support_slot`` () int64, the slot the frame's payload
replaces after its detection, or -1 to keep it out of the sample. The exported runner draws it
as the eager plan does (seed ``MODEL.SPARSEVOD.TEST_SUPPORT_SEED``).

A frame is detected with the frames in the sample, in frame order (itself when the sample is
empty); the step branches (``torch.cond``) on their number, so that the head sees exactly as
many support frames as in eager inference.
"""

from typing import List, Tuple

import torch

from .heads import sparse_rcnn_detections
from .state import FRAME_INDEX_DOC, StateTensor
from .step import StreamingStep
from .tracing import branch

__all__ = ["SparseStep"]

# Payload entry of the support frames' object features (SparseVOD's).
_OBJECTS = "objects"


class SparseStep(StreamingStep):
    """The step of a Sparse R-CNN, or of an online SparseVOD (see the module docstring)."""

    def __init__(self, model):
        """
        Args:
            model: a ``SparseRCNN``, or a ``SparseVOD`` with ``MODEL.SPARSEVOD.ONLINE``, in eval
                mode.
        """
        super().__init__(model)
        head = model.head
        self.temporal = hasattr(head, "needs_support_maps")
        self.maps = tuple(head.in_features) if self.temporal and head.needs_support_maps else ()
        self.objects = self.temporal and head.needs_support_objects
        self.keys = self.maps + ((_OBJECTS,) if self.objects else ())
        if self.temporal:
            policy = model.support_policy
            if policy.plan(1).prefetch():
                raise ValueError(
                    "SparseVOD's whole-video support reads frames ahead: export the causal "
                    "variant (vod_d2.make_online(cfg): MODEL.SPARSEVOD.ONLINE True)"
                )
            self.num_support = policy.num
            self.support_seed = policy.seed
            self.extra_inputs = ("support_slot",)

    @property
    def num_detections(self) -> int:
        return self.model.num_detections

    def extra_example(self) -> List[torch.Tensor]:
        if not self.temporal:
            return []
        return [torch.tensor(0, dtype=torch.int64, device=self.device)]

    def _payload(self, image: torch.Tensor):
        x = self.preprocess(image)
        size = tuple(image.shape[-2:])
        features = self.model.backbone(x)
        features = {f: features[f] for f in self.model.head.in_features}
        payload = {f: features[f] for f in self.maps}
        if self.objects:
            objects = self.model.head.support_object_features(features, [size])
            payload[_OBJECTS] = objects.transpose(0, 1)
        return features, size, payload

    def state_tensors(self, image: torch.Tensor) -> List[Tuple[StateTensor, torch.Tensor]]:
        if not self.temporal:
            return []
        _, _, payload = self._payload(image)
        docs = {_OBJECTS: "object features of every stage (SPFA's keys and values)"}
        tensors = []
        for key in self.keys:
            value = payload[key].expand(self.num_support, *payload[key].shape[1:])
            doc = docs.get(key, f"FPN map {key!r} (TFE's support maps)")
            doc += " of the frames in the support sample"
            spec = StateTensor(f"support.{key}", tuple(value.shape), value.dtype, 0.0, doc)
            tensors.append((spec, value))
        frames = torch.zeros((self.num_support,), dtype=torch.int64, device=image.device)
        index = frames[0]
        return tensors + [
            (
                StateTensor(
                    "support.frames", tuple(frames.shape), torch.int64, -1, FRAME_INDEX_DOC
                ),
                frames,
            ),
            (StateTensor("frame_index", (), torch.int64, 0, "index of the frame arriving"), index),
        ]

    def forward(self, image: torch.Tensor, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if not self.temporal:
            x = self.preprocess(image)
            size = tuple(image.shape[-2:])
            features = self.model.backbone(x)
            last = self.model.head({f: features[f] for f in self.model.head.in_features}, [size])
            last = last[-1]
            return tuple(sparse_rcnn_detections(last.logits, last.boxes, size, self.num_detections))
        slot, *state = inputs
        *support, frames, index = state
        features, size, payload = self._payload(image)
        stored = dict(zip(self.keys, support))
        # The sample in frame order, empty slots (-1) last.
        order = torch.where(frames >= 0, frames, frames.new_full(frames.shape, 2**62)).argsort(
            stable=True
        )
        count = (frames >= 0).sum()
        # With an empty sample a frame is its own support (SparseVOD.detect): its payload then
        # stands first in the sample, read as one support frame.
        alone = count == 0
        ordered = {
            k: torch.cat([torch.where(alone, payload[k], v[:1]), v[1:]])
            for k, v in ((k, v.index_select(0, order)) for k, v in stored.items())
        }
        maps = [features[f] for f in self.model.head.in_features]
        operands = (*maps, *(ordered[k] for k in self.keys))

        def detect_with(n):
            """The head with the first n frames of the sample."""

            def run(*operands):
                feats = dict(zip(self.model.head.in_features, operands[: len(maps)]))
                chosen = dict(zip(self.keys, [v[:n] for v in operands[len(maps) :]]))
                support = {f: chosen[f][None] for f in self.maps} if self.maps else None
                objects = chosen[_OBJECTS].transpose(0, 1)[:, None] if self.objects else None
                last = self.model.head(feats, [size], support, objects)[-1]
                return last.logits, last.boxes

            return run

        def from_count(n):
            """Detection with as many support frames as the sample holds, n or more."""
            if n == self.num_support:
                return detect_with(n)
            return lambda *ops: branch(count <= n, detect_with(n), from_count(n + 1), ops)

        logits, boxes = from_count(1)(*operands)
        detections = sparse_rcnn_detections(logits, boxes, size, self.num_detections)
        # The frame enters the sample at ``slot`` (or stays out, -1), after its detection.
        keep = slot >= 0
        at = slot.clamp(min=0)[None]
        new_support = [
            torch.where(keep, stored[k].index_copy(0, at, payload[k]), stored[k]) for k in self.keys
        ]
        new_frames = torch.where(keep, frames.index_copy(0, at, index[None]), frames)
        return (*detections, *new_support, new_frames, index + 1)
