"""
The exportable step of :class:`~vod_d2.modeling.KeyFrameRCNN` (LSTS, Impression Network, DFF):
the heavy path on key frames, the light path on the others, both in one graph.

State:

* ``frame_index`` () int64: the index of the frame arriving (0 at the start of a video). Frame
  t is a key frame when ``t % MODEL.VIDEO.KEY_FRAME_INTERVAL == 0``: key frames are the first of
  their segment (``MODEL.KEY_FRAME.POSITION "first"``; central key frames wait for frames ahead
  and are exported as the causal variant, :func:`vod_d2.make_online`);
* ``key.task`` (1, C, h, w): the last key frame's task feature (LSTS: its memory);
* LSTS: ``key.embedded`` (1, E, h, w), DFA's embedding of that memory;
* Impression Network and DFF: ``key.image`` (1, 3, H', W'), the last key frame in raw pixels as
  the flow network reads it (padded like the backbone's input), and with the impression memory
  (Impression Network) ``key.impression`` (1, C, h, w).

A key frame runs the backbone and the module's memory update (SRFU; the impression's warp and
fusion, Eq. 1-4: the first key frame of a video keeps its own feature), a non-key frame its
light path and the propagation from the key frame (DFA; the flow warp). The step chooses with
``torch.cond``, so each frame runs only its own path, as in eager inference; the flow of
Impression Network and DFF, which both paths read, runs before the choice, on every frame (a
DFF key frame does not use it: one flow per segment more than eager inference).
"""

from typing import Dict, List, Tuple

import torch

from ..modeling.flow.warp import warp
from ..modeling.frames import LIGHT
from ..modeling.temporal import ImpressionKeyFrames, LSTSKeyFrames
from .heads import roi_num_detections
from .state import StateTensor
from .step import StreamingStep
from .tracing import branch

__all__ = ["KeyFrameStep"]


class _LSTS:
    """LSTSKeyFrames: SRFU on key frames, DFA on the others."""

    def __init__(self, module: LSTSKeyFrames):
        self.fusion = module.fusion
        self.keys = ("task", "embedded")

    def describe(self) -> Dict[str, str]:
        return {
            "task": "the memory of the last key frame, its task feature (SRFU, Eq. 7)",
            "embedded": "DFA's embedding f of that memory",
        }

    def motion(self, raw, state) -> Tuple[torch.Tensor, ...]:
        return ()

    def key_frame(self, heavy, raw, state, first, motion) -> Dict[str, torch.Tensor]:
        memory = branch(
            first,
            lambda heavy, memory: self.fusion.update_memory(heavy, None).clone(),
            lambda heavy, memory: self.fusion.update_memory(heavy, memory),
            (heavy, state["task"]),
        )
        return {"task": memory, "embedded": self.fusion.embed_memory(memory)}

    def non_key_frame(self, light, raw, state, motion) -> torch.Tensor:
        return self.fusion.propagate(light, state["task"], state["embedded"])


class _Impression:
    """ImpressionKeyFrames: the impression memory (or DFF's key feature) and the flow warp."""

    def __init__(self, module: ImpressionKeyFrames):
        self.memory = module.memory
        self.flow_net = module.flow_net
        self.keys = ("task", "image") + (("impression",) if module.memory.enabled else ())

    def describe(self) -> Dict[str, str]:
        return {
            "task": "the last key frame's task feature",
            "image": "the last key frame in raw pixels (padded), for the flow network",
            "impression": "the impression feature after the last key frame (Eq. 4)",
        }

    def motion(self, raw, state) -> Tuple[torch.Tensor, ...]:
        """
        ``F(I, I_key)`` and S of the frame and the last key frame, which both paths warp with
        (a non-key frame its key frame's task feature, a key frame the impression), so it is
        computed once, before the step chooses its path: inside a ``torch.cond`` branch, the
        flow network's normalisation constants break AOTInductor.
        """
        if self.flow_net is None:  # every frame a key frame and no impression: no flow
            return ()
        return tuple(self.flow_net(raw, state["image"]))

    def key_frame(self, heavy, raw, state, first, motion) -> Dict[str, torch.Tensor]:
        if not self.memory.enabled:
            return {"task": heavy, "image": raw}

        def later(heavy, impression, flow, scale):
            # FlowNetwork.propagate(impression, raw, image) with the flow computed once.
            return self.memory.fuse(heavy, warp(impression, flow) * scale)

        task, impression = branch(
            first,
            lambda heavy, impression, flow, scale: (heavy.clone(), heavy.clone()),
            later,
            (heavy, state["impression"], *motion),
        )
        return {"task": task, "image": raw, "impression": impression}

    def non_key_frame(self, light, raw, state, motion) -> torch.Tensor:
        flow, scale = motion
        return warp(state["task"], flow) * scale


def _adapter(module):
    if isinstance(module, LSTSKeyFrames):
        return _LSTS(module)
    if isinstance(module, ImpressionKeyFrames):
        return _Impression(module)
    raise NotImplementedError(f"no exportable step for {type(module).__name__}")


class KeyFrameStep(StreamingStep):
    """The step of a :class:`~vod_d2.modeling.KeyFrameRCNN` with its key frames first in their
    segments (see the module docstring for its state)."""

    # torch.cond gives its outputs sizes of their own when the frame size is symbolic (the two
    # paths compute the task feature's size differently), which the heads then cannot use.
    symbolic_size = False

    def __init__(self, model):
        """
        Args:
            model: a ``KeyFrameRCNN`` in eval mode, ``MODEL.KEY_FRAME.POSITION "first"``.
        """
        super().__init__(model)
        if model.position != "first" and model.interval > 1:
            raise ValueError(
                f"key frames at the segments' {model.position} read frames ahead: export the "
                "causal variant (vod_d2.make_online(cfg))"
            )
        self.module = _adapter(model.key_frames)
        self.light_kind = model.key_frames.light_kind

    @property
    def num_detections(self) -> int:
        return roi_num_detections(self.model)

    def _heavy(self, x: torch.Tensor) -> torch.Tensor:
        """The heavy feature: ``KeyFrameRCNN._features`` of a key frame alone."""
        return self.model.backbone(x)[self.model.in_feature]

    def state_tensors(self, image: torch.Tensor) -> List[Tuple[StateTensor, torch.Tensor]]:
        x = self.preprocess(image)
        heavy = self._heavy(x)
        values = {"task": heavy, "image": self.model._raw(x), "impression": heavy}
        if isinstance(self.module, _LSTS):
            values["embedded"] = self.module.fusion.embed_memory(heavy)
        docs = self.module.describe()
        index = torch.zeros((), dtype=torch.int64, device=x.device)
        doc = "index of the frame arriving; frames t with t % interval == 0 are key frames"
        tensors = [(StateTensor("frame_index", (), torch.int64, 0, doc), index)]
        for key in self.module.keys:
            value = values[key]
            spec = StateTensor(f"key.{key}", tuple(value.shape), value.dtype, 0.0, docs[key])
            tensors.append((spec, value))
        return tensors

    def forward(self, image: torch.Tensor, *state: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.preprocess(image)
        raw = self.model._raw(x)
        index, *values = state
        keys = self.module.keys
        motion = self.module.motion(raw, dict(zip(keys, values)))
        is_key = index % self.model.interval == 0
        # The branches compute on operands only: a tensor made inside one from Python data (a
        # list index, a constant) breaks AOTInductor.

        def key_frame(x, raw, index, *operands):
            motion, values = operands[: len(operands) - len(keys)], operands[-len(keys) :]
            new = self.module.key_frame(
                self._heavy(x), raw, dict(zip(keys, values)), index == 0, motion
            )
            # The task feature once (it is also the new key.task: AOTInductor loses one of two
            # equal outputs of a cond), no output aliasing an input (the raw frame becomes the
            # key image).
            return (new["task"].clone(), *(new[k].clone() for k in keys[1:]))

        def non_key_frame(x, raw, index, *operands):
            motion, values = operands[: len(operands) - len(keys)], operands[-len(keys) :]
            light = None
            if self.light_kind == LIGHT:
                # KeyFrameRCNN._features of a light frame alone.
                light = self.model.backbone.forward_light(x)
            task = self.module.non_key_frame(light, raw, dict(zip(keys, values)), motion)
            return (task, *(v.clone() for v in values[1:]))

        task, *new = branch(is_key, key_frame, non_key_frame, (x, raw, index, *motion, *values))
        new = [torch.where(is_key, task, values[0]), *new]
        detections = self.rcnn_detections(x, image.shape[-2:], {self.model.in_feature: task})
        return (*detections, index + 1, *new)
