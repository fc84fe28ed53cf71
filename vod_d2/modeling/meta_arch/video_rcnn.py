"""VideoRCNN: a GeneralizedRCNN whose heads see temporally aggregated feature maps."""

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
from ..temporal.levels import SharedWeightModules
from .video_base import Payload, VideoDetector

__all__ = ["VideoRCNN"]

logger = logging.getLogger(__name__)

# Payload entries that hold the temporal modules' encodings ("temporal.<map>.<encoding>"), apart
# from the backbone's maps.
_TEMPORAL = "temporal."


@META_ARCH_REGISTRY.register()
class VideoRCNN(VideoDetector, GeneralizedRCNN):
    """
    Two-stage video detector: the backbone once per frame, a :class:`TemporalAggregation` on
    each of the backbone maps ``in_features`` (one map of a DC5 or R-FCN backbone, the levels
    of an FPN), then detectron2's proposal generator and ROI heads on the aggregated maps (the
    other backbone maps come from the reference frame).

    Every map gets its own instance of the module, built for its shape; they all compute with
    the weights of the first one, :attr:`temporal_aggregation` (the others,
    :attr:`level_aggregations`, hold their own state only: see
    :mod:`vod_d2.modeling.temporal.levels` for why the weights are shared), so the state dict
    of a multi-level model is that of a single-map one.

    A frame's payload is its backbone maps, each map of ``in_features`` replaced by its
    module's :meth:`~TemporalAggregation.encode` (entries ``"temporal.<map>.<name>"``);
    support frames contribute each module's ``support_keys`` encodings. Test-time support is
    the window ``test_window`` at ``test_stride``
    (:class:`~vod_d2.modeling.frames.WindowSupport`).

    Training input follows :class:`vod_d2.data.VideoDatasetMapper`: every dict is a reference
    frame with ``support_images`` and ``support_offsets``; all frames of a batch go through the
    backbone together, once. With ``SingleFrameAggregation`` and a (0, 0) window this is exactly
    detectron2's single-frame Faster R-CNN (and ``inference`` is its batched inference).

    In training the temporal module may give one map per frame of each training sequence,
    (B, 1 + S, C, H, W) with the reference first and the support frames in their order, instead
    of the references' (B, C, H, W) (STMN's loss on every frame, §3.1), on every map. The heads
    then run on the references and on every support frame with annotations
    (``support_instances`` entries that are not None; a frame without a record has None and no
    loss), each distinct frame of a sample once; detectron2's losses average over those frames'
    anchors and RoIs.
    """

    @configurable
    def __init__(
        self,
        *,
        temporal_aggregations: Dict[str, TemporalAggregation],
        test_window: Tuple[int, int],
        test_stride: int,
        **kwargs,
    ):
        """
        Args:
            temporal_aggregations: the backbone maps aggregated over time, each with its
                module from TEMPORAL_AGGREGATION_REGISTRY; the first one's weights are used for
                every map.
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
        (first, module), *others = temporal_aggregations.items()
        self.in_features = tuple(temporal_aggregations)
        self.temporal_aggregation = module
        self.level_aggregations = SharedWeightModules(module, dict(others), source_name=first)
        self.support_keys = tuple(
            _key(name, k) for name, m in self._aggregations() for k in m.support_keys
        )

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = dict(backbone.output_shape())
        heads = {*cfg.MODEL.RPN.IN_FEATURES, *cfg.MODEL.ROI_HEADS.IN_FEATURES}
        read = [name for name in shapes if name in heads]
        temporal = {
            name: build_temporal_aggregation(cfg, shapes[name])
            for name in _in_features(cfg, read, shapes)
        }
        for name, module in temporal.items():
            if len(read) > 1:
                _check_width_kept(cfg, name, shapes[name].channels, module, read)
            # A single map's heads are built on the aggregated map, whose width may change.
            shapes[name] = module.output_shape()
        return {
            "backbone": backbone,
            "temporal_aggregations": temporal,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "test_window": tuple(cfg.MODEL.VIDEO.TEST_WINDOW),
            "test_stride": cfg.MODEL.VIDEO.TEST_STRIDE,
        }

    # ------------------------------------------------------------------ the core's hooks
    def encode(self, images: ImageList, frames: List[FrameInfo]) -> Payload:
        """
        Backbone maps of N frames, each map of ``in_features`` replaced by its temporal
        encodings.

        Returns:
            Payload: the backbone's other maps (N, C, H, W) under their names, and the
            encodings of each map ``m`` under ``"temporal.<m>.<name>"``.
        """
        if any(f.kind != FULL for f in frames):
            raise ValueError("VideoRCNN runs the full backbone on every frame")
        features = self.backbone(images.tensor)
        payload = {}
        for name, module in self._aggregations():
            encoded = module.encode(features.pop(name), frames)
            payload.update({_key(name, k): v for k, v in encoded.items()})
        return {**features, **payload}

    def detect(self, target, support, frame, support_frames, images):
        """Aggregate one frame's window on every map, then run the RPN and ROI heads."""
        offsets = [s.index - frame.index for s in support_frames]
        offsets = torch.as_tensor([offsets], dtype=torch.int64, device=self.device).view(1, -1)
        aggregated = {}
        for name, module in self._aggregations():
            ref = self._encodings(target, name)
            stacked = {}
            for key in module.support_keys:
                values = [p[_key(name, key)] for p in support]
                stacked[key] = (
                    torch.cat(values)[None]
                    if values
                    else ref[key].new_empty((1, 0, *ref[key].shape[1:]))
                )
            aggregated[name] = module(ref, stacked, offsets, [frame])
        features = self._head_features(target, aggregated)
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
        offsets = torch.as_tensor(offsets, dtype=torch.int64, device=self.device)
        offsets = offsets.reshape(batch, num_support)
        aggregated = {}
        for name, module in self._aggregations():
            encoded = self._encodings(payload, name)
            ref = {k: v[:batch] for k, v in encoded.items()}
            support = {
                k: encoded[k][batch:].reshape(batch, num_support, *encoded[k].shape[1:])
                for k in module.support_keys
            }
            aggregated[name] = module(ref, support, offsets, frames[:batch])
        # The frames that carry the loss, as positions in the encoded batch (references first).
        with_loss = list(range(batch))
        gt_instances = [x["instances"] for x in batched_inputs]
        if any(maps.dim() == 5 for maps in aggregated.values()):
            for name, maps in aggregated.items():
                if maps.dim() != 5 or tuple(maps.shape[:2]) != (batch, 1 + num_support):
                    raise ValueError(
                        f"{type(self.temporal_aggregation).__name__} gave maps of shape "
                        f"{tuple(maps.shape)} for {name!r}: one map per frame of each sequence "
                        f"must be (B, 1 + S, C, H, W) = ({batch}, {1 + num_support}, ...), on "
                        "every map"
                    )
            supports, support_instances = _annotated_support_frames(batched_inputs)
            rows = [b * (1 + num_support) for b in range(batch)]
            rows += [b * (1 + num_support) + 1 + j for b, j in supports]
            aggregated = {name: maps.flatten(0, 1)[rows] for name, maps in aggregated.items()}
            with_loss += [batch + b * num_support + j for b, j in supports]
            gt_instances += support_instances
        index = torch.as_tensor(with_loss, device=self.device)
        features = self._head_features(
            {k: v[index] for k, v in payload.items() if not k.startswith(_TEMPORAL)}, aggregated
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
        offsets = torch.zeros((len(batched_inputs), 0), dtype=torch.int64, device=self.device)
        aggregated = {}
        for name, module in self._aggregations():
            ref = self._encodings(payload, name)
            support = {
                k: ref[k].new_empty((ref[k].shape[0], 0, *ref[k].shape[1:]))
                for k in module.support_keys
            }
            aggregated[name] = module(ref, support, offsets, frames)
        features = self._head_features(payload, aggregated)
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
    def _aggregations(self) -> List[Tuple[str, TemporalAggregation]]:
        """(map, module) for every map of ``in_features``, in order."""
        modules = [self.temporal_aggregation, *self.level_aggregations.values()]
        return list(zip(self.in_features, modules))

    @staticmethod
    def _encodings(payload: Payload, name: str) -> Dict[str, torch.Tensor]:
        """The temporal encodings of map ``name`` in ``payload``, by encoding name."""
        prefix = _key(name, "")
        return {k[len(prefix) :]: v for k, v in payload.items() if k.startswith(prefix)}

    @staticmethod
    def _head_features(
        payload: Payload, aggregated: Dict[str, torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        """The maps the heads read: the reference's backbone maps and the aggregated ones."""
        features = {k: v for k, v in payload.items() if not k.startswith(_TEMPORAL)}
        return {**features, **aggregated}


def _key(name: str, encoding: str) -> str:
    """The payload entry of encoding ``encoding`` of map ``name``."""
    return f"{_TEMPORAL}{name}.{encoding}"


def _in_features(cfg, read: List[str], shapes: Dict) -> List[str]:
    """
    The backbone maps to aggregate: ``MODEL.VIDEO.IN_FEATURES``, else
    ``[MODEL.VIDEO.IN_FEATURE]``, else every map the heads ``read`` (in the backbone's order).
    """
    video = cfg.MODEL.VIDEO
    names, key = list(video.IN_FEATURES), "MODEL.VIDEO.IN_FEATURES"
    if names and video.IN_FEATURE and video.IN_FEATURE not in names:
        raise ValueError(
            f"MODEL.VIDEO.IN_FEATURE={video.IN_FEATURE!r} is not one of "
            f"MODEL.VIDEO.IN_FEATURES={names}: set IN_FEATURES alone (IN_FEATURE '')"
        )
    if not names and video.IN_FEATURE:
        names, key = [video.IN_FEATURE], "MODEL.VIDEO.IN_FEATURE"
    if not names:
        names, key = read, "the maps the heads read (MODEL.RPN/ROI_HEADS.IN_FEATURES)"
    unknown = [n for n in names if n not in shapes]
    if unknown or not names or len(set(names)) != len(names):
        raise KeyError(
            f"{key}={names} must name distinct backbone outputs, at least one (available: "
            f"{sorted(shapes)})"
        )
    return names


def _check_width_kept(cfg, name: str, channels: int, module: TemporalAggregation, read: List):
    """
    Heads that read several maps (an FPN's) use one set of weights for maps of one width, so
    an aggregated map must keep its width (a single map's heads are built on whatever it has).
    """
    width = module.output_shape().channels
    if width == channels:
        return
    directions = 2 if cfg.MODEL.STMN.BIDIRECTIONAL else 1
    hint = {
        "STMNAggregation": f": MODEL.STMN.MEMORY_CHANNELS {channels // directions} (its "
        f"{directions} memories are concatenated)",
        "STMNSingleFrameAggregation": f": MODEL.STMN.MEMORY_CHANNELS {channels}",
        "STSNAggregation": ": MODEL.STSN.OUT_CHANNELS 0",
        "SSNAggregation": ": MODEL.STSN.OUT_CHANNELS 0",
    }.get(cfg.MODEL.VIDEO.AGGREGATION, "")
    raise ValueError(
        f"{cfg.MODEL.VIDEO.AGGREGATION} turns the {channels}-channel map {name!r} into {width} "
        f"channels, but the heads read it with {read}, all of one width: configure it to keep "
        f"{channels} channels{hint}"
    )


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
