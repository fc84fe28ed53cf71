"""VideoRCNN: a GeneralizedRCNN whose heads see a temporally aggregated feature map."""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList, Instances
from detectron2.utils.logger import log_first_n

from ..frames import FULL, FrameInfo, WindowSupport
from ..temporal.build import TemporalAggregation, build_temporal_aggregation
from .video_base import Payload, VideoDetector

__all__ = ["VideoRCNN"]

logger = logging.getLogger(__name__)

# Payload entries that hold the temporal module's encodings, apart from the backbone's maps.
_TEMPORAL = "temporal."


@META_ARCH_REGISTRY.register()
class VideoRCNN(VideoDetector, GeneralizedRCNN):
    """
    Two-stage video detector: the backbone once per frame, a :class:`TemporalAggregation` on
    one backbone map (``in_feature``), then detectron2's proposal generator and ROI heads on
    the aggregated map (the other backbone maps come from the reference frame).

    A frame's payload is its backbone maps, with ``in_feature`` replaced by the temporal
    module's :meth:`~TemporalAggregation.encode` (entries ``"temporal.<name>"``); support
    frames contribute the module's ``support_keys`` encodings. Test-time support is the window
    ``test_window`` at ``test_stride`` (:class:`~vod_d2.modeling.frames.WindowSupport`).

    Training input follows :class:`vod_d2.data.VideoDatasetMapper`: every dict is a reference
    frame with ``support_images`` and ``support_offsets``; all frames of a batch go through the
    backbone together, once. With ``SingleFrameAggregation`` and a (0, 0) window this is exactly
    detectron2's single-frame Faster R-CNN (and ``inference`` is its batched inference).

    In training the temporal module may give one map per frame of each training sequence,
    (B, 1 + S, C, H, W) with the reference first and the support frames in their order, instead
    of the references' (B, C, H, W) (STMN's loss on every frame, §3.1). The heads then run on
    the references and on every support frame with annotations (``support_instances`` entries
    that are not None; a frame without a record has None and no loss), each distinct frame of a
    sample once; detectron2's losses average over those frames' anchors and RoIs.
    """

    @configurable
    def __init__(
        self,
        *,
        temporal_aggregation: TemporalAggregation,
        in_feature: str,
        test_window: Tuple[int, int],
        test_stride: int,
        **kwargs,
    ):
        """
        Args:
            temporal_aggregation: module from TEMPORAL_AGGREGATION_REGISTRY.
            in_feature: name of the backbone map that is aggregated over time.
            test_window: (frames before, frames after) the reference used at test time.
            test_stride: frame step between members of the test window.
            kwargs: arguments of :class:`GeneralizedRCNN`.
        """
        before, after = test_window
        if before < 0 or after < 0 or test_stride < 1:
            raise ValueError(
                f"MODEL.VIDEO.TEST_WINDOW must be two non-negative ints and TEST_STRIDE >= 1, "
                f"got {tuple(test_window)} and {test_stride}"
            )
        offsets = [test_stride * j for j in range(-before, after + 1) if j != 0]
        super().__init__(support_policy=WindowSupport(offsets), **kwargs)
        self.temporal_aggregation = temporal_aggregation
        self.in_feature = in_feature
        self.support_keys = tuple(_TEMPORAL + k for k in temporal_aggregation.support_keys)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = dict(backbone.output_shape())
        in_feature = cfg.MODEL.VIDEO.IN_FEATURE
        if in_feature not in shapes:
            raise KeyError(
                f"MODEL.VIDEO.IN_FEATURE={in_feature!r} is not a backbone output "
                f"(available: {sorted(shapes)})"
            )
        temporal = build_temporal_aggregation(cfg, shapes[in_feature])
        # The heads are built on the aggregated map, whose width the method may change.
        shapes[in_feature] = temporal.output_shape()
        return {
            "backbone": backbone,
            "temporal_aggregation": temporal,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "in_feature": in_feature,
            "test_window": tuple(cfg.MODEL.VIDEO.TEST_WINDOW),
            "test_stride": cfg.MODEL.VIDEO.TEST_STRIDE,
        }

    # ------------------------------------------------------------------ the core's hooks
    def encode(self, images: ImageList, frames: List[FrameInfo]) -> Payload:
        """
        Backbone maps of N frames, ``in_feature`` replaced by the temporal encodings.

        Returns:
            Payload: the backbone's maps (N, C, H, W) under their names, and the temporal
            module's encodings under ``"temporal.<name>"``.
        """
        if any(f.kind != FULL for f in frames):
            raise ValueError("VideoRCNN runs the full backbone on every frame")
        features = self.backbone(images.tensor)
        encoded = self.temporal_aggregation.encode(features.pop(self.in_feature), frames)
        return {**features, **{_TEMPORAL + k: v for k, v in encoded.items()}}

    def detect(self, target, support, frame, support_frames, images):
        """Aggregate one frame's window, then run the RPN and ROI heads on it."""
        offsets = [s.index - frame.index for s in support_frames]
        ref = self._encodings(target)
        stacked = {}
        for key in self.temporal_aggregation.support_keys:
            values = [p[_TEMPORAL + key] for p in support]
            stacked[key] = (
                torch.cat(values)[None]
                if values
                else ref[key].new_empty((1, 0, *ref[key].shape[1:]))
            )
        offsets = torch.as_tensor([offsets], dtype=torch.int64, device=self.device).view(1, -1)
        features = self._head_features(
            target, self.temporal_aggregation(ref, stacked, offsets, [frame])
        )
        proposals, _ = self.proposal_generator(images, features, None)
        (results,), _ = self.roi_heads(images, features, proposals, None)
        return results

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: in training, reference-frame dicts of
                :class:`vod_d2.data.VideoDatasetMapper`, each with the same number S of
                ``support_images``; in eval mode, the consecutive frames of one video.

        Returns:
            dict of losses in training; in eval mode a list with one ``{"instances": ...}``
            per input frame, in order.
        """
        if not self.training:
            return self.inference(batched_inputs)

        num_support = {len(x.get("support_images", [])) for x in batched_inputs}
        if len(num_support) != 1:
            raise ValueError(
                f"all samples of a batch need as many support frames, got {num_support}"
            )
        (num_support,) = num_support
        batch = len(batched_inputs)
        offsets = [list(x.get("support_offsets", [])) for x in batched_inputs]
        frames = [_training_frame(x, 0) for x in batched_inputs]
        frames += [_training_frame(x, o) for x, row in zip(batched_inputs, offsets) for o in row]
        images = self.preprocess_image(
            [{"image": x["image"]} for x in batched_inputs]
            + [{"image": s} for x in batched_inputs for s in x.get("support_images", [])]
        )
        payload = self.encode(images, frames)
        encoded = self._encodings(payload)
        ref = {k: v[:batch] for k, v in encoded.items()}
        support = {
            k: encoded[k][batch:].reshape(batch, num_support, *encoded[k].shape[1:])
            for k in self.temporal_aggregation.support_keys
        }
        offsets = torch.as_tensor(offsets, dtype=torch.int64, device=self.device)
        aggregated = self.temporal_aggregation(
            ref, support, offsets.reshape(batch, num_support), frames[:batch]
        )
        # The frames that carry the loss, as positions in the encoded batch (references first).
        with_loss = list(range(batch))
        gt_instances = [x["instances"] for x in batched_inputs]
        if aggregated.dim() == 5:
            if tuple(aggregated.shape[:2]) != (batch, 1 + num_support):
                raise ValueError(
                    f"{type(self.temporal_aggregation).__name__} gave maps of shape "
                    f"{tuple(aggregated.shape)}: one map per frame of each sequence must be "
                    f"(B, 1 + S, C, H, W) = ({batch}, {1 + num_support}, ...)"
                )
            supports, support_instances = _annotated_support_frames(batched_inputs)
            maps = aggregated.flatten(0, 1)[
                [b * (1 + num_support) for b in range(batch)]
                + [b * (1 + num_support) + 1 + j for b, j in supports]
            ]
            with_loss += [batch + b * num_support + j for b, j in supports]
            gt_instances += support_instances
        else:
            maps = aggregated
        index = torch.as_tensor(with_loss, device=self.device)
        features = self._head_features(
            {k: v[index] for k, v in payload.items() if not k.startswith(_TEMPORAL)}, maps
        )
        loss_images = ImageList(images.tensor[index], [images.image_sizes[i] for i in with_loss])

        gt_instances = [x.to(self.device) for x in gt_instances]
        proposals, proposal_losses = self.proposal_generator(loss_images, features, gt_instances)
        _, detector_losses = self.roi_heads(loss_images, features, proposals, gt_instances)
        if self.vis_period > 0:
            from detectron2.utils.events import get_event_storage

            if get_event_storage().iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)
        return {**detector_losses, **proposal_losses}

    # ------------------------------------------------------------------ single images
    def inference_frames(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """
        detectron2's ``GeneralizedRCNN.inference`` for frame-independent models (no support
        frame, stateless module): the inputs are independent images, batched.
        """
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        frames = [FrameInfo(x.get("frame_idx", i)) for i, x in enumerate(batched_inputs)]
        payload = self.encode(images, frames)
        ref = self._encodings(payload)
        support = {
            k: ref[k].new_empty((ref[k].shape[0], 0, *ref[k].shape[1:]))
            for k in self.temporal_aggregation.support_keys
        }
        offsets = torch.zeros((len(batched_inputs), 0), dtype=torch.int64, device=self.device)
        features = self._head_features(
            payload, self.temporal_aggregation(ref, support, offsets, frames)
        )
        if detected_instances is None:
            proposals, _ = self.proposal_generator(images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _encodings(payload: Payload) -> Dict[str, torch.Tensor]:
        return {k[len(_TEMPORAL) :]: v for k, v in payload.items() if k.startswith(_TEMPORAL)}

    def _head_features(self, payload: Payload, aggregated: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The maps the heads read: the reference's backbone maps and the aggregated one."""
        features = {k: v for k, v in payload.items() if not k.startswith(_TEMPORAL)}
        features[self.in_feature] = aggregated
        return features


def _annotated_support_frames(batched_inputs: List[Dict]) -> Tuple[List[Tuple[int, int]], List]:
    """
    The support frames that carry a loss when the temporal module gives every frame a map:
    those with annotations (``support_instances`` not None), each distinct frame of a sample
    once, the reference (offset 0) excluded as it has its own.

    Returns:
        (list of (sample, support position), list[Instances]): the frames and their targets.
    """
    frames, targets = [], []
    for b, sample in enumerate(batched_inputs):
        offsets = list(sample.get("support_offsets", []))
        if "support_instances" not in sample:
            log_first_n(
                logging.WARNING,
                "the temporal module gives every frame of a training sequence a map, but the "
                "samples have no 'support_instances' (VideoDatasetMapper with an annotation "
                "table): the loss is on the reference frames only",
                name=__name__,
            )
            continue
        instances = sample["support_instances"]
        if len(instances) != len(offsets):
            raise ValueError(
                f"sample {b} has {len(offsets)} support_offsets but {len(instances)} "
                "support_instances"
            )
        seen = {0}
        for j, (offset, target) in enumerate(zip(offsets, instances)):
            if target is not None and offset not in seen:
                seen.add(offset)
                frames.append((b, j))
                targets.append(target)
    return frames, targets


def _training_frame(sample: Dict, offset: int) -> FrameInfo:
    return FrameInfo(sample.get("frame_idx", 0) + offset, sample.get("video_length"))
