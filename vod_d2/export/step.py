"""
:class:`StreamingStep`: a video detector's per-frame inference as a pure function of the frame
and an explicit state, the form a graph without hidden state can be exported in.

A :class:`~vod_d2.modeling.VideoDetector` streams a video with ``reset/step``, keeping its
payload cache and its temporal modules' memories between calls. A step takes the same frame and
the state as tensors of fixed shape, and returns the frame's detections and the next state::

    step(image, *extra, *state) -> (boxes, scores, classes, count, *new_state)

* ``image``: (3, H, W) uint8, the frame as the model's test loader gives it (resized to
  ``INPUT.MIN_SIZE_TEST``, channels in ``INPUT.FORMAT`` order);
* ``extra``: inputs that are not state, named by :attr:`StreamingStep.extra_inputs` (SparseVOD's
  support slot; none for the other methods);
* ``boxes`` (D, 4), ``scores`` (D,), ``classes`` (D,) int64, ``count`` () int64: the frame's
  detections in the image's pixels, the ``count`` kept ones first by decreasing score, then
  padding (class -1), D = ``TEST.DETECTIONS_PER_IMAGE`` (:class:`~.heads.Detections`);
* ``state``: :meth:`StreamingStep.state` names and shapes every tensor; a video starts from
  :meth:`StreamingStep.initial_state`.

Frame t's detections are those ``model.step`` gives for frame t of a video of unknown length
(the online variant: every support frame is in the past). Three steps cover the meta-
architectures, each sharing the model's own modules: :class:`~.window.WindowStep`
(``VideoRCNN``), :class:`~.key_frame.KeyFrameStep` (``KeyFrameRCNN``) and
:class:`~.sparse.SparseStep` (``SparseRCNN``, ``SparseVOD``).
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .heads import Detections, padded_image, roi_detections, rpn_proposals
from .state import StateTensor

__all__ = ["StreamingStep", "OUTPUTS", "frame_index"]

#: Names of a step's detection outputs, before its state.
OUTPUTS = ("boxes", "scores", "classes", "count")


class StreamingStep(nn.Module):
    """
    Base of the exportable steps (see the module docstring).

    A subclass implements :meth:`forward` and, if it has state, :meth:`state_tensors`.
    """

    #: Inputs between the image and the state.
    extra_inputs: Tuple[str, ...] = ()
    #: Whether the step traces with a symbolic frame size (else it is exported for one size).
    symbolic_size: bool = True

    def __init__(self, model: nn.Module):
        """
        Args:
            model: the video detector, in eval mode; the step computes with its modules.
        """
        super().__init__()
        if model.training:
            raise ValueError("a streaming step is made from a model in eval mode (model.eval())")
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def num_detections(self) -> int:
        """D, the detections every step returns (padded)."""
        raise NotImplementedError

    def state_tensors(self, image: torch.Tensor) -> List[Tuple[StateTensor, torch.Tensor]]:
        """
        The state's tensors for a frame of ``image``'s size, each with an example tensor of its
        shape and dtype, computed from the frame. Subclasses with state override it.

        Args:
            image (Tensor): (3, H, W) uint8 frame.

        Returns:
            list of (StateTensor, Tensor): in the order the step takes and returns them; the
            StateTensor's shape is the example's.
        """
        return []

    def state(self, height: int, width: int) -> List[StateTensor]:
        """
        The state's tensors for (H, W) frames, in the order the step takes and returns them.

        Args:
            height, width: the frames' size (the step's ``image`` is (3, H, W)).
        """
        image = torch.zeros((3, height, width), dtype=torch.uint8, device=self.device)
        with torch.no_grad():
            return [spec for spec, _ in self.state_tensors(image)]

    def initial_state(self, height: int, width: int) -> List[torch.Tensor]:
        """The state at the start of every video (the streaming API's ``reset``)."""
        return [s.initial(self.device) for s in self.state(height, width)]

    def extra_example(self) -> List[torch.Tensor]:
        """Example values of :attr:`extra_inputs` (for tracing)."""
        return []

    def example_inputs(self, height: int, width: int) -> Tuple[torch.Tensor, ...]:
        """A frame of (H, W), the extra inputs and the initial state: what export traces."""
        image = torch.zeros((3, height, width), dtype=torch.uint8, device=self.device)
        return (image, *self.extra_example(), *self.initial_state(height, width))

    def forward(self, image: torch.Tensor, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
            image (Tensor): (3, H, W) uint8 frame.
            inputs: :attr:`extra_inputs`, then the state (:meth:`state`).

        Returns:
            tuple: boxes (D, 4), scores (D,), classes (D,), count (), then the new state.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ shared parts
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The model's ``preprocess_image`` of one frame: (1, 3, H', W') normalised, padded."""
        backbone = self.model.backbone
        constraints = getattr(backbone, "padding_constraints", {}) or {}
        # ImageList.from_tensors: the constraint, when given, overrides the backbone's value.
        divisibility = constraints.get("size_divisibility", backbone.size_divisibility)
        return padded_image(image, self.model.pixel_mean, self.model.pixel_std, divisibility)

    def rcnn_detections(
        self, x: torch.Tensor, image_size: Sequence[int], features: dict
    ) -> Detections:
        """The RPN and ROI heads of a ``GeneralizedRCNN`` on ``features``, fixed-shape."""
        image_size = tuple(image_size)
        boxes, valid = rpn_proposals(self.model.proposal_generator, x, image_size, features)
        return roi_detections(self.model.roi_heads, features, image_size, boxes, valid)


def frame_index(frames: torch.Tensor) -> torch.Tensor:
    """The index of the frame arriving, from the (L,) frame indices of a window's slots, the
    latest last: one after the latest (0 while every slot is empty, -1)."""
    return frames[-1] + 1
