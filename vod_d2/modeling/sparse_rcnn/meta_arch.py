"""
Sparse R-CNN (single frame) and SparseVOD, as meta-architectures on the streaming core
(:class:`~vod_d2.modeling.meta_arch.video_base.VideoDetector`).
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, GeneralizedRCNN, build_backbone
from detectron2.structures import ImageList, Instances

from ..frames import FULL, FrameInfo, GlobalSupport, NoSupport, SupportPolicy
from ..meta_arch.video_base import Payload, VideoDetector
from .criterion import SetCriterion
from .head import SparseRCNNHead, sparse_rcnn_inference
from .temporal_head import TemporalDynamicHead

__all__ = ["SparseRCNN", "SparseVOD", "PastFramesSupport"]

# Payload entry of a frame's object features as a support frame: (1, num_stages, N, d).
_OBJECTS = "sparsevod.objects"


@META_ARCH_REGISTRY.register()
class SparseRCNN(VideoDetector):
    """
    Sparse R-CNN (Sun et al., CVPR 2021), frame by frame: an FPN backbone, then
    :class:`SparseRCNNHead` (learnable proposals, iterative dynamic stages), trained with the
    set-prediction loss (:class:`SetCriterion`) and tested without NMS
    (:func:`sparse_rcnn_inference`). A frame's payload is its FPN maps ``in_features``; no
    support frame is read, so ``inference`` batches independent images.

    Training input follows :class:`vod_d2.data.VideoDatasetMapper`; support images, if any,
    are ignored.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: SparseRCNNHead,
        criterion: SetCriterion,
        pixel_mean: List[float],
        pixel_std: List[float],
        num_detections: int = 100,
        support_policy: Optional[SupportPolicy] = None,
    ):
        """
        Args:
            backbone: an FPN backbone whose outputs include the head's ``in_features``.
            head: the iterative head.
            criterion: the set-prediction loss.
            pixel_mean, pixel_std: per-channel normalisation of the input images.
            num_detections: detections per frame (the best (proposal, class) pairs).
            support_policy: what a frame's detection reads (default: nothing else).
        """
        super().__init__(support_policy=support_policy or NoSupport())
        self.backbone = backbone
        self.head = head
        self.criterion = criterion
        self.num_detections = num_detections
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(
                f"MODEL.PIXEL_MEAN {pixel_mean} and MODEL.PIXEL_STD {pixel_std} differ in length"
            )

    @classmethod
    def _base_config(cls, cfg, head_type):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "head": head_type(cfg, backbone.output_shape()),
            "criterion": SetCriterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @classmethod
    def from_config(cls, cfg):
        return cls._base_config(cfg, SparseRCNNHead)

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise, pad and batch the ``image`` (C, H, W) of each input dict."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def _features(self, images: ImageList) -> Dict[str, torch.Tensor]:
        features = self.backbone(images.tensor)
        return {f: features[f] for f in self.head.in_features}

    # ------------------------------------------------------------------ the core's hooks
    def encode(self, images: ImageList, frames: List[FrameInfo]) -> Payload:
        """
        Returns:
            Payload: the FPN maps ``in_features`` of the N frames, each (N, d, H_l, W_l).
        """
        if any(f.kind != FULL for f in frames):
            raise ValueError(f"{type(self).__name__} runs the full backbone on every frame")
        return self._features(images)

    def detect(self, target, support, frame, support_frames, images):
        outputs = self.head(target, images.image_sizes)
        return self._instances(outputs, images)[0]

    def _instances(self, outputs, images) -> List[Instances]:
        last = outputs[-1]
        return sparse_rcnn_inference(
            last.logits, last.boxes, images.image_sizes, self.num_detections
        )

    def inference_frames(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """The inputs as independent images, batched (the single-frame contract)."""
        assert not self.training
        if detected_instances is not None:
            raise ValueError(f"{type(self).__name__} predicts its own boxes: no detected_instances")
        images = self.preprocess_image(batched_inputs)
        results = self._instances(self.head(self._features(images), images.image_sizes), images)
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: in training, frame dicts with ``image`` and ``instances``; in eval
                mode, the consecutive frames of one video (or independent images).

        Returns:
            dict of losses in training; in eval mode one ``{"instances": ...}`` per input.
        """
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        outputs = self.head(self._features(images), images.image_sizes)
        return self._losses(outputs, batched_inputs)

    def _losses(self, outputs, batched_inputs):
        for x in batched_inputs:
            if "instances" not in x:
                raise KeyError(f"training input {x.get('file_name', '')!r} has no 'instances'")
        return self.criterion(outputs, [x["instances"].to(self.device) for x in batched_inputs])


class PastFramesSupport(GlobalSupport):
    """
    :class:`~vod_d2.modeling.frames.GlobalSupport`'s online variant whatever the video's
    length: a uniform sample of up to ``num`` past frames (for evaluating the streaming
    SparseVOD on datasets whose lengths are known).
    """

    def plan(self, video_length):
        return super().plan(None)


@META_ARCH_REGISTRY.register()
class SparseVOD(SparseRCNN):
    """
    SparseVOD (Hashmi et al., BMVC 2022): Sparse R-CNN whose head is the
    :class:`TemporalDynamicHead` (TFE and SPFA over T support frames).

    Support frames: in training, the sample's ``support_images`` (``INPUT.VIDEO.TRAIN_SAMPLING``
    "global": uniform over the whole video; a DET image is its own support). At test time
    ``num_support`` frames spread uniformly over the whole video
    (:class:`~vod_d2.modeling.frames.GlobalSupport`, the same for every frame of the video,
    computed once before the video is streamed); when the length is unknown (a stream), or
    with ``online``, a uniform sample of past frames (the first frame is its own support).

    A frame's payload is its FPN maps (support frames lend them to TFE) and, when SPFA is on
    and the frame is one that some frame reads as support, its object features of every stage
    (``"sparsevod.objects"``, (1, num_stages, N, d)): a support frame's single-frame pass
    through the stages runs once per video, not once per target.
    """

    @configurable
    def __init__(self, *, num_support: int, support_seed: int = 0, online: bool = False, **kwargs):
        """
        Args:
            num_support: support frames per frame at test time (paper: 6; Table 5: 2 to 14).
            support_seed: seed of the test-time draw (deterministic per video length).
            online: read past frames only, even when the video's length is known.
            kwargs: arguments of :class:`SparseRCNN`; ``head`` is a TemporalDynamicHead.
        """
        policy = (PastFramesSupport if online else GlobalSupport)(num_support, support_seed)
        super().__init__(support_policy=policy, **kwargs)
        if not isinstance(self.head, TemporalDynamicHead):
            raise TypeError(
                f"SparseVOD needs a TemporalDynamicHead, got {type(self.head).__name__}"
            )
        keys = []
        if self.head.needs_support_maps:
            keys += self.head.in_features
        if self.head.needs_support_objects:
            keys.append(_OBJECTS)
        self.support_keys = tuple(keys)

    @classmethod
    def from_config(cls, cfg):
        ret = cls._base_config(cfg, TemporalDynamicHead)
        sv = cfg.MODEL.SPARSEVOD
        ret.update(num_support=sv.TEST_NUM_SUPPORT, support_seed=sv.TEST_SUPPORT_SEED)
        ret["online"] = sv.ONLINE
        return ret

    # ------------------------------------------------------------------ the core's hooks
    def _read_as_support(self, frame: FrameInfo) -> bool:
        if frame.video_length is None or isinstance(self.support_policy, PastFramesSupport):
            return True
        # GlobalSupport's draw depends on its seed and the video's length only: this is the
        # plan the core made for the frame's video.
        return frame.index in self.support_policy.plan(frame.video_length).prefetch()

    def encode(self, images, frames):
        """
        Returns:
            Payload: the FPN maps, and with SPFA the support object features
            ``"sparsevod.objects"`` (N, num_stages, N_proposals, d) when any of the frames is
            read as a support frame.
        """
        payload = super().encode(images, frames)
        if self.head.needs_support_objects and any(self._read_as_support(f) for f in frames):
            objects = self.head.support_object_features(payload, images.image_sizes)
            payload[_OBJECTS] = objects.transpose(0, 1)
        return payload

    def detect(self, target, support, frame, support_frames, images):
        # Before any past frame (online variant), a frame is its own support.
        support = support or [target]
        maps = objects = None
        if self.head.needs_support_maps:
            maps = {f: torch.cat([p[f] for p in support])[None] for f in self.head.in_features}
        if self.head.needs_support_objects:
            objects = torch.cat([p[_OBJECTS] for p in support]).transpose(0, 1)[:, None]
        outputs = self.head(
            {f: target[f] for f in self.head.in_features}, images.image_sizes, maps, objects
        )
        return self._instances(outputs, images)[0]

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: in training, reference-frame dicts of
                :class:`vod_d2.data.VideoDatasetMapper`, each with the same number T >= 1 of
                ``support_images``; in eval mode, the consecutive frames of one video.

        Returns:
            dict of losses in training; in eval mode one ``{"instances": ...}`` per frame.
        """
        if not self.training:
            return self.inference(batched_inputs)
        num_support = {len(x.get("support_images", ())) for x in batched_inputs}
        if len(num_support) != 1 or 0 in num_support:
            raise ValueError(
                f"SparseVOD trains on samples with as many support frames each, at least one "
                f"(INPUT.VIDEO.TRAIN_SAMPLING 'global', TRAIN_NUM_SUPPORT), got {num_support}"
            )
        (num_support,) = num_support
        batch = len(batched_inputs)
        # Every frame of the batch goes through the backbone once, together.
        images = self.preprocess_image(
            batched_inputs + [{"image": s} for x in batched_inputs for s in x["support_images"]]
        )
        features = self._features(images)
        target = {k: v[:batch] for k, v in features.items()}
        support = {k: v[batch:] for k, v in features.items()}
        support_sizes = images.image_sizes[batch:]
        maps = objects = None
        if self.head.needs_support_maps:
            maps = {k: v.unflatten(0, (batch, num_support)) for k, v in support.items()}
        if self.head.needs_support_objects:
            objects = self.head.support_object_features(support, support_sizes)
            objects = objects.unflatten(1, (batch, num_support))
        outputs = self.head(target, images.image_sizes[:batch], maps, objects)
        return self._losses(outputs, batched_inputs)
