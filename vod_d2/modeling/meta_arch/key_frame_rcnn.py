"""KeyFrameRCNN: the heavy feature network on key frames only, a key-frame module elsewhere."""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList

from ..backbone import SplitResNet
from ..frames import FULL, LIGHT, FrameInfo, KeySegmentSupport, key_frame_index
from ..temporal.key_frame import KeyFrameModule, build_key_frame_module
from .video_base import Payload, VideoDetector

__all__ = ["KeyFrameRCNN"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class KeyFrameRCNN(VideoDetector, GeneralizedRCNN):
    """
    Key-frame video detector (LSTS, Impression Network, Deep Feature Flow).

    The video is cut into segments of ``interval`` frames, each with one key frame, its first
    (online) or its central one (``MODEL.KEY_FRAME.POSITION``). The backbone, the heavy
    feature network N_feat, runs on key frames only; the other frames take the key-frame
    module's light path: the backbone's low-level part (a :class:`SplitResNet`, ``LIGHT``) or
    nothing (``NONE``). The :class:`KeyFrameModule` (``MODEL.KEY_FRAME.MODULE``) turns a key
    frame's heavy feature into its task feature, updating its recurrent memory, and gives every
    other frame a task feature from its own payload and its key frame's. The proposal generator
    and ROI heads read the task feature as the backbone map ``in_feature``.

    Each frame's backbone part runs once: a key frame's light part is the start of its heavy
    path. A training sample is an annotated frame with two support frames, the old and the new
    key frame (``INPUT.VIDEO.TRAIN_SAMPLING "key_frame"``): the module sees the old key frame,
    then the new one (its memory now holds the old one), then the annotated frame, exactly as
    at test time; the loss is on the annotated frame.
    """

    @configurable
    def __init__(
        self,
        *,
        key_frames: KeyFrameModule,
        in_feature: str,
        interval: int,
        position: str = "first",
        **kwargs,
    ):
        """
        Args:
            key_frames: the method's key-frame module.
            in_feature: the backbone map that is the heavy feature, and that the heads read.
            interval: the key-frame interval l.
            position: where a segment's key frame lies, "first" or "center".
            kwargs: arguments of :class:`GeneralizedRCNN`.
        """
        if key_frames.every_frame_is_key:
            interval = 1
        super().__init__(support_policy=KeySegmentSupport(interval, position), **kwargs)
        if key_frames.light_kind == LIGHT and not isinstance(self.backbone, SplitResNet):
            raise ValueError(
                f"{type(key_frames).__name__} runs the backbone's light part on non-key frames: "
                "MODEL.BACKBONE.NAME must build a SplitResNet (build_split_resnet_backbone, "
                "build_split_rfcn_resnet_backbone)"
            )
        self.key_frames = key_frames
        self.in_feature = in_feature
        self.interval = interval
        self.position = position
        self.support_keys = tuple(key_frames.support_keys)
        if not key_frames.end_to_end:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = dict(backbone.output_shape())
        in_feature = cfg.MODEL.KEY_FRAME.IN_FEATURE
        if in_feature not in shapes:
            raise KeyError(
                f"MODEL.KEY_FRAME.IN_FEATURE={in_feature!r} is not a backbone output "
                f"(available: {sorted(shapes)})"
            )
        low = backbone.low_level_shape() if isinstance(backbone, SplitResNet) else None
        key_frames = build_key_frame_module(cfg, shapes[in_feature], low)
        shapes = {in_feature: key_frames.output_shape()}
        return {
            "backbone": backbone,
            "key_frames": key_frames,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "in_feature": in_feature,
            "interval": cfg.MODEL.VIDEO.KEY_FRAME_INTERVAL,
            "position": cfg.MODEL.KEY_FRAME.POSITION,
        }

    # ------------------------------------------------------------------ the core's hooks
    def frame_kind(self, index: int, video_length: Optional[int]) -> str:
        """Key frames get the heavy network, the others the module's light path."""
        key = key_frame_index(index, video_length, self.interval, self.position)
        return FULL if index == key else self.key_frames.light_kind

    def encode(self, images: ImageList, frames: List[FrameInfo]) -> Payload:
        """
        The payload of N frames of one kind: a key frame's from its heavy feature (updating
        the module's memory), another frame's from its light path.
        """
        kinds = {f.kind for f in frames}
        if len(kinds) != 1:
            raise ValueError(f"KeyFrameRCNN encodes frames of one kind at a time, got {kinds}")
        (kind,) = kinds
        heavy, light = self._features(images.tensor, [kind] * len(frames))
        raw = self._raw(images.tensor)
        if kind == FULL:
            return self.key_frames.key_frame(heavy, raw, frames)
        return self.key_frames.non_key_frame(light, raw, frames)

    def detect(self, target, support, frame, support_frames, images):
        """Run the heads on the frame's task feature (a non-key frame's from its key frame)."""
        task = target["task"] if frame.is_key else self.key_frames.propagate(target, support[0])
        features = {self.in_feature: task}
        proposals, _ = self.proposal_generator(images, features, None)
        (results,), _ = self.roi_heads(images, features, proposals, None)
        return results

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: in training, annotated-frame dicts of
                :class:`vod_d2.data.VideoDatasetMapper` whose two ``support_images`` are the
                old and the new key frame (``support_offsets`` ``[old - t, new - t]``); in eval
                mode, the consecutive frames of one video.

        Returns:
            dict of losses in training; in eval mode one ``{"instances": ...}`` per frame.
        """
        if not self.training:
            return self.inference(batched_inputs)
        if any(len(x.get("support_images", ())) != 2 for x in batched_inputs):
            raise ValueError(
                "KeyFrameRCNN trains on (annotated frame, old key frame, new key frame) samples: "
                'set INPUT.VIDEO.TRAIN_SAMPLING "key_frame"'
            )
        batch = len(batched_inputs)
        if self.interval == 1:
            # Every frame is a key frame: the annotated frame is the new key frame itself.
            task, images = self._train_as_key_frames(batched_inputs)
        else:
            task, images = self._train_with_key_frames(batched_inputs)
        features = {self.in_feature: task}
        ref_images = ImageList(images.tensor[:batch], images.image_sizes[:batch])
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(ref_images, features, gt_instances)
        _, detector_losses = self.roi_heads(ref_images, features, proposals, gt_instances)
        return {**detector_losses, **proposal_losses}

    def _train_with_key_frames(self, batched_inputs: List[Dict]):
        """The annotated frames' task features, (B, C, h, w), and the batch's images."""
        batch = len(batched_inputs)
        frames = [{"image": x["image"]} for x in batched_inputs]
        frames += [{"image": x["support_images"][k]} for k in (0, 1) for x in batched_inputs]
        images = self.preprocess_image(frames)
        light_kind = self.key_frames.light_kind
        heavy, light = self._features(images.tensor, [light_kind] * batch + [FULL] * 2 * batch)
        raw = self._raw(images.tensor)
        infos = [_training_frame(x, 0, light_kind) for x in batched_inputs]
        infos += [
            _training_frame(x, x["support_offsets"][k], FULL)
            for k in (0, 1)
            for x in batched_inputs
        ]
        # The test-time calls in the order of a video: old key, new key, then the frame.
        self.reset_state()
        self.key_frames.key_frame(heavy[:batch], raw[batch : 2 * batch], infos[batch : 2 * batch])
        new_key = self.key_frames.key_frame(heavy[batch:], raw[2 * batch :], infos[2 * batch :])
        target = self.key_frames.non_key_frame(light, raw[:batch], infos[:batch])
        task = self.key_frames.propagate(target, new_key)
        self.reset_state()
        # The annotated frame that is its own new key frame reads the key's task feature.
        is_key = torch.tensor(
            [x["support_offsets"][1] == 0 for x in batched_inputs], device=self.device
        )
        return torch.where(is_key[:, None, None, None], new_key["task"], task), images

    def _train_as_key_frames(self, batched_inputs: List[Dict]):
        """With every frame a key frame: the old key frame, then the annotated frame."""
        batch = len(batched_inputs)
        frames = [{"image": x["image"]} for x in batched_inputs]
        frames += [{"image": x["support_images"][0]} for x in batched_inputs]
        images = self.preprocess_image(frames)
        heavy, _ = self._features(images.tensor, [FULL] * 2 * batch)
        raw = self._raw(images.tensor)
        infos = [_training_frame(x, 0, FULL) for x in batched_inputs]
        infos += [_training_frame(x, x["support_offsets"][0], FULL) for x in batched_inputs]
        self.reset_state()
        self.key_frames.key_frame(heavy[batch:], raw[batch:], infos[batch:])
        task = self.key_frames.key_frame(heavy[:batch], raw[:batch], infos[:batch])["task"]
        self.reset_state()
        return task, images

    # ------------------------------------------------------------------ helpers
    def _features(
        self, x: torch.Tensor, kinds: List[str]
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """
        The heavy feature of the FULL frames and the light feature of the LIGHT ones, each part
        of the backbone run once: with a split backbone, the light part runs on both kinds and
        the rest on the FULL frames.

        Args:
            x (Tensor): (N, 3, H, W) normalised frames.
            kinds: each frame's kind.

        Returns:
            (heavy (F, C, h, w) or None, light (L, C_low, h', w') or None), in frame order.
        """
        full = [i for i, k in enumerate(kinds) if k == FULL]
        lights = [i for i, k in enumerate(kinds) if k == LIGHT]
        heavy = light = None
        if isinstance(self.backbone, SplitResNet) and lights:
            order = sorted(full + lights)
            low = self.backbone.forward_light(x[order])
            position = {i: p for p, i in enumerate(order)}
            light = low[[position[i] for i in lights]]
            if full:
                rest = self.backbone.forward_rest(low[[position[i] for i in full]])
                heavy = rest[self.in_feature]
        elif full:
            heavy = self.backbone(x[full])[self.in_feature]
        return heavy, light

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames back in raw pixels (flow networks take those)."""
        return x * self.pixel_std + self.pixel_mean


def _training_frame(sample: Dict, offset: int, kind: str) -> FrameInfo:
    index = sample.get("frame_idx", 0)
    file_name = sample.get("file_name", "")
    return FrameInfo(index + offset, sample.get("video_length"), kind, file_name, index)
