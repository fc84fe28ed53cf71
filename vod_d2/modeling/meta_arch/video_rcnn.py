"""VideoRCNN: a GeneralizedRCNN whose heads see a temporally aggregated feature map."""

import logging
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList
from torch import nn

from ..temporal.build import build_temporal_aggregation
from .frame_window import FeatureWindow

__all__ = ["VideoRCNN"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class VideoRCNN(GeneralizedRCNN):
    """
    Two-stage video detector: backbone once per frame, a temporal aggregation module on one
    backbone map (``in_feature``), then detectron2's proposal generator and ROI heads.

    Training input follows :class:`vod_d2.data.VideoDatasetMapper`: every dict is a reference
    frame with ``support_images`` and ``support_offsets``. The reference and support frames of
    the whole batch go through the backbone together, once.

    Test input is one video, frame by frame, through the streaming API: :meth:`reset` before a
    video, :meth:`step` for each frame in order, :meth:`flush` at its end. Each frame's backbone
    feature is computed once and kept in a :class:`FeatureWindow` only while a pending frame's
    test window needs it. Offline methods (a window reaching into the future) get their results
    delayed by the look-ahead; online methods keep recurrent state in the aggregation module,
    which :meth:`reset` clears. With the default ``SingleFrameAggregation`` and a (0, 0) window
    this is exactly the single-frame Faster R-CNN baseline.
    """

    @configurable
    def __init__(
        self,
        *,
        temporal_aggregation: nn.Module,
        in_feature: str,
        test_window: Tuple[int, int],
        test_stride: int,
        **kwargs,
    ):
        """
        Args:
            temporal_aggregation: module from TEMPORAL_AGGREGATION_REGISTRY (see its contract).
            in_feature: name of the backbone map that is aggregated over time.
            test_window: (frames before, frames after) the reference used at test time.
            test_stride: frame step between members of the test window.
            kwargs: arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.temporal_aggregation = temporal_aggregation
        self.in_feature = in_feature
        before, after = test_window
        if before < 0 or after < 0 or test_stride < 1:
            raise ValueError(
                f"MODEL.VIDEO.TEST_WINDOW must be two non-negative ints and TEST_STRIDE >= 1, "
                f"got {tuple(test_window)} and {test_stride}"
            )
        self.test_offsets = [test_stride * j for j in range(-before, after + 1) if j != 0]
        self._window = None

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
        frames = [x["image"] for x in batched_inputs]
        frames += [s for x in batched_inputs for s in x.get("support_images", [])]
        offsets = torch.as_tensor(
            [x.get("support_offsets", []) for x in batched_inputs], dtype=torch.int64
        ).reshape(len(batched_inputs), num_support)

        images = self._preprocess(frames)
        batch = len(batched_inputs)
        all_features = self.backbone(images.tensor)
        features = {k: v[:batch] for k, v in all_features.items()}
        encoded = self._encode(all_features[self.in_feature])
        support = encoded[batch:].reshape(batch, num_support, *encoded.shape[1:])
        features[self.in_feature] = self.temporal_aggregation(
            encoded[:batch], support, offsets.to(support.device)
        )
        ref_images = ImageList(images.tensor[:batch], images.image_sizes[:batch])

        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(ref_images, features, gt_instances)
        _, detector_losses = self.roi_heads(ref_images, features, proposals, gt_instances)
        if self.vis_period > 0:
            from detectron2.utils.events import get_event_storage

            if get_event_storage().iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)
        return {**detector_losses, **proposal_losses}

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True):
        """
        Detect objects in the consecutive frames of one video (a whole, short video; use the
        streaming API for long ones).

        Returns:
            list[dict]: ``{"instances": Instances}`` per frame, in input order.
        """
        if not do_postprocess:
            raise NotImplementedError("VideoRCNN.inference always post-processes")
        self.reset()
        done = []
        for frame in batched_inputs:
            done.extend(self.step(frame))
        done.extend(self.flush())
        return [output for _, output in done]

    def reset(self):
        """Start a new video: drop the feature window and the aggregation module's state."""
        self._window = FeatureWindow(self.test_offsets, self.in_feature)
        self.temporal_aggregation.reset()

    @torch.no_grad()
    def step(self, frame: Dict) -> List[Tuple[Dict, Dict]]:
        """
        Feed the next frame of the current video.

        Args:
            frame: a test dict of :class:`VideoDatasetMapper` (``image`` (C, H, W) and metadata).

        Returns:
            list of (frame metadata, ``{"instances": Instances}``) for the frames whose window
            became complete, in frame order (empty while the look-ahead fills).
        """
        if self._window is None:
            self.reset()
        images = self._preprocess([frame["image"]])
        features = self.backbone(images.tensor)
        features[self.in_feature] = self._encode(features[self.in_feature])
        meta = {k: v for k, v in frame.items() if k != "image"}
        self._window.push(meta, features, images.image_sizes[0])
        return [self._detect(*item) for item in self._window.pop_ready()]

    @torch.no_grad()
    def flush(self) -> List[Tuple[Dict, Dict]]:
        """End the current video: detect in every pending frame (borders repeat the last frame)."""
        if self._window is None:
            return []
        done = [self._detect(*item) for item in self._window.pop_ready(final=True)]
        self._window = None
        return done

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """The aggregation module's per-frame ``encode`` of (N, C, H, W) maps, if it has one."""
        encode = getattr(self.temporal_aggregation, "encode", None)
        return x if encode is None else encode(x)

    def _detect(self, meta: Dict, features: Dict[str, torch.Tensor], image_size, support, offsets):
        """Aggregate one frame's window, run the heads and rescale to the frame's size."""
        features = dict(features)
        offsets = torch.as_tensor(offsets, dtype=torch.int64, device=self.device)[None]
        features[self.in_feature] = self.temporal_aggregation(
            features[self.in_feature], support, offsets
        )
        # detectron2's RPN and ROI heads read only the image sizes of an ImageList.
        images = ImageList(support.new_empty((1, 0, 0, 0)), [image_size])
        proposals, _ = self.proposal_generator(images, features, None)
        results, _ = self.roi_heads(images, features, proposals, None)
        (output,) = GeneralizedRCNN._postprocess(results, [meta], [image_size])
        return meta, output

    def _preprocess(self, frames: List[torch.Tensor]) -> ImageList:
        """Normalise (C, H, W) uint8 frames and pad them into one ImageList."""
        images = [
            (self._move_to_current_device(x) - self.pixel_mean) / self.pixel_std for x in frames
        ]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )
