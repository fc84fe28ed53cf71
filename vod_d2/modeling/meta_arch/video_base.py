"""
The streaming core: :class:`VideoDetector`, the base of every video meta-architecture.

It owns the test-time API (:meth:`~VideoDetector.reset`, :meth:`~VideoDetector.step`,
:meth:`~VideoDetector.flush`, :meth:`~VideoDetector.inference`), the per-video cache of frame
payloads, the order of the results and the per-video reset of recurrent state. A subclass says
only three things:

1. what each frame gets and computes when it arrives: :meth:`~VideoDetector.frame_kind` (the
   feature policy: heavy backbone, light path or nothing) and :meth:`~VideoDetector.encode`
   (the frame's payload, a dict of named tensors; it may update recurrent state);
2. what each frame's detection needs: ``self.support_policy`` (a window of neighbours, nothing
   but the recurrent state, or support frames sampled over the whole video) and
   :attr:`~VideoDetector.support_keys` (which payload entries a support frame contributes);
3. how it detects: :meth:`~VideoDetector.detect`.

It also needs ``preprocess_image(batched_inputs) -> ImageList`` (detectron2's
``GeneralizedRCNN`` has it).

The cache holds a frame's whole payload until its own detection, then only its
``support_keys`` entries while the support plan says a later frame may read them, so memory
is bounded by the method's window whatever the video's length.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from torch import nn

from ..frames import FULL, FrameInfo, SupportPlan, SupportPolicy
from ..temporal.build import TemporalModule

__all__ = ["Payload", "VideoDetector"]

logger = logging.getLogger(__name__)

#: A frame's cached values: named tensors, each with a leading batch dimension of 1.
Payload = Dict[str, torch.Tensor]
#: What the streaming API returns for a frame: its metadata (the input dict without "image")
#: and ``{"instances": Instances}`` in the frame's original size.
FrameResult = Tuple[Dict, Dict[str, Instances]]


@dataclass
class _Pending:
    """A frame waiting for its detection: its metadata, its FrameInfo and its input image,
    (C, H, W) as given (uint8 from the loaders: 4x smaller than the normalised float input,
    which preprocess_image computes again at detection)."""

    meta: Dict
    frame: FrameInfo
    image: torch.Tensor


@dataclass
class _VideoState:
    """Everything the core keeps about the current video."""

    length: Optional[int]
    plan: SupportPlan
    num_seen: int = 0
    next_target: int = 0
    cache: Dict[int, Payload] = field(default_factory=dict)
    frames: Dict[int, FrameInfo] = field(default_factory=dict)
    pending: Dict[int, _Pending] = field(default_factory=dict)
    primed: Set[int] = field(default_factory=set)


class VideoDetector(nn.Module):
    """
    Base of video meta-architectures (see the module docstring for what a subclass defines).

    Streaming use, one video at a time::

        model.reset(video_length)          # None if unknown
        for i in model.prefetch_indices(): # whole-video support only
            model.prime(frames[i])
        for frame in frames:
            for meta, output in model.step(frame): ...
        for meta, output in model.flush(): ...

    :func:`vod_d2.engine.run_on_video` does exactly this. Results come in frame order, each as
    soon as the frames its detection needs have arrived.
    """

    #: Payload entries a frame keeps once its own detection is done, for the frames that read
    #: it as a support frame. Subclasses set it (empty: nothing is kept).
    support_keys: Sequence[str] = ()

    def __init__(self, *, support_policy: SupportPolicy, **kwargs):
        """
        Args:
            support_policy: what each frame's detection reads besides its own payload.
            kwargs: arguments of the next base class (e.g. detectron2's ``GeneralizedRCNN``).
        """
        super().__init__(**kwargs)
        self.support_policy = support_policy
        self._video: Optional[_VideoState] = None

    # ------------------------------------------------------------------ what a subclass says
    def frame_kind(self, index: int, video_length: Optional[int]) -> str:
        """
        The feature policy: what frame ``index`` gets, :data:`~vod_d2.modeling.frames.FULL`
        (default), ``LIGHT`` or ``NONE``. Used at test time and to build training samples.
        """
        return FULL

    def encode(self, images: ImageList, frames: List[FrameInfo]) -> Payload:
        """
        Compute the payloads of N frames, once per frame: at test time when the frame arrives
        (N = 1, frames in order), in training over all frames of a batch together.

        Args:
            images: the frames, preprocessed, (N, C, H, W).
            frames: their metadata.

        Returns:
            Payload: named (N, ...) tensors.
        """
        raise NotImplementedError

    def detect(
        self,
        target: Payload,
        support: List[Payload],
        frame: FrameInfo,
        support_frames: List[FrameInfo],
        images: ImageList,
    ) -> Instances:
        """
        Detect the objects of one frame.

        Args:
            target: the frame's own payload.
            support: the :attr:`support_keys` payloads of the frames its plan reads, in the
                plan's order.
            frame: the frame's metadata.
            support_frames: the support frames' metadata.
            images: the frame, preprocessed (one image).

        Returns:
            Instances: detections in the coordinates of ``images``.
        """
        raise NotImplementedError

    @property
    def frame_independent(self) -> bool:
        """Whether each frame is detected from itself alone, with no recurrent state."""
        stateful = any(type(m).reset is not TemporalModule.reset for m in self._temporal_modules())
        return self.support_policy.frame_independent and not stateful

    # ------------------------------------------------------------------ streaming API
    def reset(self, video_length: Optional[int] = None):
        """
        Start a new video: drop the cache and clear the state of every temporal module.

        Args:
            video_length: the number of frames, where known (dataset videos, video files);
                whole-video support needs it, and window methods use it to emit the last frames
                without waiting for :meth:`flush`.
        """
        if video_length is not None and video_length < 1:
            raise ValueError(f"a video has at least one frame, got video_length={video_length}")
        self.reset_state()
        self._video = _VideoState(video_length, self.support_policy.plan(video_length))

    def reset_state(self):
        """Clear the recurrent state of every :class:`TemporalModule` of the model."""
        for module in self._temporal_modules():
            module.reset()

    def prefetch_indices(self) -> List[int]:
        """Frames to :meth:`prime` before streaming the current video (whole-video support)."""
        return self._state().plan.prefetch()

    @torch.no_grad()
    def prime(self, frame: Dict, index: Optional[int] = None):
        """
        Compute the payload of one of :meth:`prefetch_indices`' frames before the stream; its
        backbone is not run again when the frame comes in the stream.

        Args:
            frame: the frame's test dict (``image`` (C, H, W) and metadata).
            index: the frame's index in the video; defaults to ``frame["frame_idx"]``.
        """
        video = self._state()
        index = frame["frame_idx"] if index is None else index
        if index not in video.plan.prefetch():
            raise ValueError(f"frame {index} is not one of the prefetched frames")
        info = self._frame_info(frame, index)
        video.cache[index] = self.encode(self.preprocess_image([frame]), [info])
        video.frames[index] = info
        video.primed.add(index)

    def _frame_info(self, frame: Dict, index: int) -> FrameInfo:
        """The :class:`FrameInfo` of the current video's frame ``index`` (test dict ``frame``)."""
        length = self._video.length
        kind = self.frame_kind(index, length)
        return FrameInfo(index, length, kind, frame.get("file_name", ""), index)

    @torch.no_grad()
    def step(self, frame: Dict) -> List[FrameResult]:
        """
        Feed the next frame of the current video.

        Args:
            frame: a test dict of :class:`vod_d2.data.VideoDatasetMapper` (``image`` (C, H, W)
                and metadata; ``height``/``width`` give the output size).

        Returns:
            list of (frame metadata, ``{"instances": Instances}``) for the frames that became
            ready, in frame order (empty while a look-ahead fills).
        """
        if self._video is None:
            self.reset(frame.get("video_length"))
        video = self._video
        missing = set(video.plan.prefetch()) - video.primed
        if missing:
            raise RuntimeError(
                f"frames {sorted(missing)} must be primed (prefetch_indices/prime) before the "
                "video is streamed; reset(video_length=None) streams with past support only"
            )
        index = video.num_seen
        if video.length is not None and index >= video.length:
            # Containers' frame counts can be estimates: plan the rest as of unknown length.
            logger.warning(f"frame {index} is beyond the announced video length {video.length}")
            video.length = None
        if index in video.primed:
            info = video.frames[index]
        else:
            info = self._frame_info(frame, index)
            video.cache[index] = self.encode(self.preprocess_image([frame]), [info])
            video.frames[index] = info
        video.plan.observe(info)
        video.pending[index] = _Pending(
            {k: v for k, v in frame.items() if k != "image"}, info, frame["image"]
        )
        video.num_seen += 1
        return self._detect_ready(final=False)

    @torch.no_grad()
    def flush(self) -> List[FrameResult]:
        """End the current video: detect its pending frames (borders clamp to the last frame)."""
        if self._video is None:
            return []
        done = self._detect_ready(final=True)
        self._video = None
        return done

    def inference(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """
        Detect objects in ``batched_inputs``: the consecutive frames of one (short, whole)
        video, streamed through :meth:`reset`/:meth:`step`/:meth:`flush`.

        A frame-independent model (no support frame, no recurrent state: the single-frame
        baseline) instead treats the inputs as independent images, exactly as detectron2's
        ``GeneralizedRCNN.inference`` does, so ``detected_instances``, ``do_postprocess=False``
        and test-time augmentation work; a video model refuses them.

        Returns:
            list: ``{"instances": Instances}`` per input, in order (raw ``Instances`` in the
            network's input size when ``do_postprocess`` is False).
        """
        if self.frame_independent:
            return self.inference_frames(batched_inputs, detected_instances, do_postprocess)
        if detected_instances is not None or not do_postprocess:
            raise ValueError(
                f"{type(self).__name__} reads other frames or recurrent state, so its inference "
                "takes whole videos and post-processes them: detected_instances and "
                "do_postprocess=False need a frame-independent (single-frame) model"
            )
        self.reset(len(batched_inputs))
        done = []
        for frame in batched_inputs:
            done.extend(self.step(frame))
        done.extend(self.flush())
        return [output for _, output in done]

    def inference_frames(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Batched inference of independent images (frame-independent models only)."""
        raise NotImplementedError(f"{type(self).__name__} has no batched single-image inference")

    # ------------------------------------------------------------------ introspection
    def num_cached_tensors(self) -> int:
        """Tensors the cache holds for the current video (frame payloads and images)."""
        if self._video is None:
            return 0
        video = self._video
        return sum(len(p) for p in video.cache.values()) + len(video.pending)

    # ------------------------------------------------------------------ internals
    def _state(self) -> _VideoState:
        if self._video is None:
            raise RuntimeError("call reset() before the first frame of a video")
        return self._video

    def _temporal_modules(self) -> List[TemporalModule]:
        return [m for m in self.modules() if isinstance(m, TemporalModule)]

    def _detect_ready(self, final: bool) -> List[FrameResult]:
        video = self._video
        length = video.num_seen if final else video.length
        done = []
        while video.next_target < video.num_seen:
            t = video.next_target
            indices = video.plan.support(t, length)
            if any(i >= video.num_seen and i not in video.primed for i in indices):
                break
            pending = video.pending.pop(t)
            images = self.preprocess_image([{"image": pending.image}])
            instances = self.detect(
                video.cache[t],
                [video.cache[i] for i in indices],
                pending.frame,
                [video.frames[i] for i in indices],
                images,
            )
            height = pending.meta.get("height", images.image_sizes[0][0])
            width = pending.meta.get("width", images.image_sizes[0][1])
            done.append(
                (pending.meta, {"instances": detector_postprocess(instances, height, width)})
            )
            video.next_target += 1
            self._evict(t)
        return done

    def _evict(self, detected: int):
        """Keep only what frames after ``detected`` may read."""
        video = self._video
        keys = set(self.support_keys)
        video.cache[detected] = {k: v for k, v in video.cache[detected].items() if k in keys}
        for i in list(video.cache):
            if i > detected:
                continue
            if not video.plan.keep(i, video.next_target):
                del video.cache[i]
                video.frames.pop(i, None)
