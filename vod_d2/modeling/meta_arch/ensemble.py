"""
STMN's test-time ensemble (Xiao & Lee, §4: "During testing we ensemble the detection results of
the STMN detector with the initial R-FCN detector from which it started, since it comes for
free as a byproduct of the training procedure").

The authors' code (``fanyix/STMN``, ``external/dp/functions/rfcn/rfcn_test_vid_preload_det.m``)
concatenates the two detectors' detections of each frame before its temporal linkage. Here
:class:`StaticEnsembleRCNN` runs both detectors on every frame as it streams (each frame's
backbone once per detector), takes the union of their detections, suppresses duplicates with
class-wise NMS at the test NMS threshold (``MODEL.ROI_HEADS.NMS_THRESH_TEST``, 0.3 in the
authors' code) and keeps the ``TEST.DETECTIONS_PER_IMAGE`` best; Seq-NMS
(``TEST.SEQ_NMS.ENABLED``) then links the merged detections over the video, as for any model.
"""

import logging
import os
from typing import Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable, get_cfg
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import Instances

from ..frames import FrameInfo
from .video_base import VideoDetector
from .video_rcnn import VideoRCNN

__all__ = ["StaticEnsembleRCNN", "build_static_detector", "merge_detections"]

logger = logging.getLogger(__name__)

# Payload entries of the static detector.
_STATIC = "static."


def merge_detections(
    detections: Sequence[Instances], nms_thresh: float, max_detections: int
) -> Instances:
    """
    The ensemble of several detectors' detections of one image: their union, class-wise NMS,
    and the best ``max_detections`` by score.

    Args:
        detections: each detector's ``Instances`` (``pred_boxes``, ``scores``,
            ``pred_classes``), all of the same image size.
        nms_thresh: boxes of a class overlapping a better one of that class above this IoU
            are dropped.
        max_detections: detections kept (a negative value keeps all).

    Returns:
        Instances: the merged detections, best score first.
    """
    merged = Instances.cat(list(detections))
    keep = batched_nms(merged.pred_boxes.tensor, merged.scores, merged.pred_classes, nms_thresh)
    if max_detections >= 0:
        keep = keep[:max_detections]
    return merged[keep]


def build_static_detector(cfg) -> VideoDetector:
    """
    The static detector of ``cfg.MODEL.STMN.ENSEMBLE``, built from ``STATIC_CONFIG`` on
    ``cfg.MODEL.DEVICE`` (its weights are loaded by :class:`StaticEnsembleRCNN`).
    """
    from vod_d2.config import add_vod_config

    ensemble = cfg.MODEL.STMN.ENSEMBLE
    if not ensemble.STATIC_CONFIG or not ensemble.STATIC_WEIGHTS:
        raise ValueError(
            "StaticEnsembleRCNN needs the static detector's config and checkpoint: set "
            "MODEL.STMN.ENSEMBLE.STATIC_CONFIG and MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS (got "
            f"{ensemble.STATIC_CONFIG!r} and {ensemble.STATIC_WEIGHTS!r})"
        )
    static_cfg = get_cfg()
    add_vod_config(static_cfg)
    static_cfg.merge_from_file(ensemble.STATIC_CONFIG)
    static_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    return build_model(static_cfg)


@META_ARCH_REGISTRY.register()
class StaticEnsembleRCNN(VideoRCNN):
    """
    A :class:`VideoRCNN` (the video detector: its config and ``MODEL.WEIGHTS``) whose test
    detections are ensembled with a frame-independent detector's on the same frames
    (``static_detector``, e.g. the R-FCN that STMN started from; see the module docstring).

    It is a test-time model: train the two detectors on their own. Each frame's payload holds
    both detectors' encodings (the static one's under ``"static.<name>"``), and each frame's
    detection is :func:`merge_detections` of both detections.

    The static detector's weights are not in the video detector's checkpoint: they are read
    from ``static_weights`` (``MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS``) when the first video
    starts, after ``MODEL.WEIGHTS`` has been loaded (:meth:`load_state_dict` leaves the
    ``static_detector.*`` tensors alone), so that the model builds without either file.
    """

    @configurable
    def __init__(
        self,
        *,
        static_detector: VideoDetector,
        ensemble_nms_thresh: float,
        max_detections_per_image: int,
        static_weights: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            static_detector: a frame-independent :class:`VideoDetector` (no support frames, no
                recurrent state) that preprocesses images as this model does.
            static_weights: its checkpoint, loaded at the first :meth:`reset`; None uses it
                as given.
            ensemble_nms_thresh: IoU of the class-wise NMS over the merged detections.
            max_detections_per_image: detections kept per frame (negative: all).
            kwargs: arguments of :class:`VideoRCNN`.
        """
        super().__init__(**kwargs)
        if not static_detector.frame_independent:
            raise ValueError(
                f"the ensemble's static detector must be frame-independent (no support frames, "
                f"no recurrent state), got a {type(static_detector).__name__} that is not"
            )
        mismatched = [
            name
            for name, mine, theirs in [
                ("MODEL.PIXEL_MEAN", self.pixel_mean, static_detector.pixel_mean),
                ("MODEL.PIXEL_STD", self.pixel_std, static_detector.pixel_std),
            ]
            if not torch.equal(mine.cpu(), theirs.cpu())
        ]
        if self.input_format != static_detector.input_format:
            mismatched.append("INPUT.FORMAT")
        if self.backbone.size_divisibility != static_detector.backbone.size_divisibility:
            mismatched.append("the backbone's size divisibility")
        if mismatched:
            raise ValueError(
                f"the ensemble's detectors see each frame preprocessed once, so they must agree "
                f"on {', '.join(mismatched)}"
            )
        self.static_detector = static_detector
        self.ensemble_nms_thresh = ensemble_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self._static_weights = static_weights

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            {
                "static_detector": build_static_detector(cfg),
                "ensemble_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
                "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
                "static_weights": cfg.MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS,
            }
        )
        return ret

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """
        Load ``state_dict``, e.g. the video detector's checkpoint (``MODEL.WEIGHTS``): the static
        detector's tensors it does not have are left as they are, and not reported missing
        (they come from ``static_weights``).
        """
        static = self.static_detector.state_dict(prefix="static_detector.")
        kept = {k: v for k, v in static.items() if k not in state_dict}
        return super().load_state_dict({**state_dict, **kept}, strict, assign)

    def reset(self, video_length: Optional[int] = None):
        """See :meth:`VideoDetector.reset`; the first one loads the static detector's weights."""
        if self._static_weights is not None:
            if not os.path.isfile(self._static_weights):
                raise FileNotFoundError(
                    f"MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS={self._static_weights!r}: no such file "
                    "(the checkpoint of the static detector the ensemble reads)"
                )
            DetectionCheckpointer(self.static_detector).load(self._static_weights)
            logger.info(f"Ensemble static detector loaded from {self._static_weights}")
            self._static_weights = None
        super().reset(video_length)

    @property
    def frame_independent(self) -> bool:
        """False: the ensemble always streams (its detections merge both detectors')."""
        return False

    def encode(self, images, frames):
        """The video detector's payload and the static detector's (``"static.<name>"``)."""
        payload = super().encode(images, frames)
        static_frames = [
            FrameInfo(f.index, f.video_length, self.static_detector.frame_kind(f.index, None))
            for f in frames
        ]
        static = self.static_detector.encode(images, static_frames)
        return {**payload, **{_STATIC + k: v for k, v in static.items()}}

    def detect(self, target, support, frame, support_frames, images):
        """Both detectors' detections of the frame, merged."""
        own = {k: v for k, v in target.items() if not k.startswith(_STATIC)}
        static = {k[len(_STATIC) :]: v for k, v in target.items() if k.startswith(_STATIC)}
        detections = [
            super().detect(own, support, frame, support_frames, images),
            self.static_detector.detect(static, [], frame, [], images),
        ]
        return merge_detections(detections, self.ensemble_nms_thresh, self.max_detections_per_image)

    def forward(self, batched_inputs):
        """Inference only (see :meth:`VideoRCNN.forward`)."""
        if self.training:
            raise RuntimeError(
                "StaticEnsembleRCNN is a test-time model: train the video detector (VideoRCNN) "
                "and the static detector on their own, then ensemble them for evaluation"
            )
        return self.inference(batched_inputs)
