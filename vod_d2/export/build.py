"""
Which methods have an exportable step, the step of a model, and the one-line refusal of those
that have none yet.

:func:`export_blockers` reads the config alone (nothing is built or traced) and names, for each
part that blocks the export, the config key, the class and its module, and what in it has no
graph form yet. :func:`build_streaming_step` makes the step of a built model.
"""

from typing import List

from detectron2.modeling import META_ARCH_REGISTRY

from ..modeling.temporal import (
    KEY_FRAME_REGISTRY,
    TEMPORAL_AGGREGATION_REGISTRY,
    STMNAggregation,
    TemporalModule,
)
from .key_frame import KeyFrameStep
from .sparse import SparseStep
from .step import StreamingStep
from .window import WindowStep

__all__ = ["NotExportable", "export_blockers", "check_exportable", "build_streaming_step"]

_STEPS = {
    "VideoRCNN": WindowStep,
    "KeyFrameRCNN": KeyFrameStep,
    "SparseRCNN": SparseStep,
    "SparseVOD": SparseStep,
}
_RCNN = ("VideoRCNN", "KeyFrameRCNN")
_ROI_HEADS = ("StandardROIHeads", "RFCNROIHeads")
_KEY_FRAME_MODULES = ("LSTSKeyFrames", "ImpressionKeyFrames")
_FLOW_NETS = ("FlowNetS", "RAFTSmall")


class NotExportable(ValueError):
    """A config whose method has no exportable step yet; the message is one line naming the
    part (config key, class and module) that blocks it."""


def _where(registry, name: str) -> str:
    """``name (module.Class)`` of a registered class, or the name alone."""
    try:
        cls = registry.get(name)
    except KeyError:
        return name
    return f"{name} ({cls.__module__}.{cls.__qualname__})"


def export_blockers(cfg) -> List[str]:
    """
    Every part of ``cfg``'s model that has no exportable form yet, one line each (empty: the
    method exports). Offline windows and central key frames are not blockers: the export
    takes their causal variant (:func:`vod_d2.make_online`).
    """
    from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

    from ..modeling.flow import FLOW_NET_REGISTRY

    blockers = []
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in _STEPS:
        blockers.append(
            f"MODEL.META_ARCHITECTURE {_where(META_ARCH_REGISTRY, arch)}: no streaming step for "
            f"it yet (exportable: {', '.join(_STEPS)})"
        )
        return blockers
    if cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
        blockers.append("MODEL.MASK_ON / MODEL.KEYPOINT_ON: the exported heads give boxes only")
    if cfg.TEST.AUG.ENABLED:
        blockers.append("TEST.AUG.ENABLED: test-time augmentation runs several passes per frame")
    if arch in _RCNN:
        name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
        if name != "RPN":
            blockers.append(
                f"MODEL.PROPOSAL_GENERATOR.NAME {_where(PROPOSAL_GENERATOR_REGISTRY, name)}: "
                "the fixed-shape proposals are those of detectron2's RPN only"
            )
        name = cfg.MODEL.ROI_HEADS.NAME
        if name not in _ROI_HEADS:
            blockers.append(
                f"MODEL.ROI_HEADS.NAME {_where(ROI_HEADS_REGISTRY, name)}: the fixed-shape "
                f"detections are those of {' and '.join(_ROI_HEADS)} only"
            )
    if arch == "VideoRCNN":
        name = cfg.MODEL.VIDEO.AGGREGATION
        try:
            cls = TEMPORAL_AGGREGATION_REGISTRY.get(name)
        except KeyError:
            cls = None
        if cls is not None and not issubclass(cls, STMNAggregation):
            if cls.reset is not TemporalModule.reset:
                blockers.append(
                    f"MODEL.VIDEO.AGGREGATION {_where(TEMPORAL_AGGREGATION_REGISTRY, name)}: it "
                    "keeps state in its attributes between frames (reset), which a step needs "
                    "as tensors"
                )
    if arch == "KeyFrameRCNN":
        name = cfg.MODEL.KEY_FRAME.MODULE
        if name not in _KEY_FRAME_MODULES:
            blockers.append(
                f"MODEL.KEY_FRAME.MODULE {_where(KEY_FRAME_REGISTRY, name)}: no step for its "
                f"memory yet (exportable: {', '.join(_KEY_FRAME_MODULES)})"
            )
        elif name == "ImpressionKeyFrames" and cfg.MODEL.FLOW.NAME not in _FLOW_NETS:
            blockers.append(
                f"MODEL.FLOW.NAME {_where(FLOW_NET_REGISTRY, cfg.MODEL.FLOW.NAME)}: not an "
                f"exportable flow network ({', '.join(_FLOW_NETS)})"
            )
    return blockers


def check_exportable(cfg) -> None:
    """Raise :class:`NotExportable` with the first of :func:`export_blockers`, if any."""
    blockers = export_blockers(cfg)
    if blockers:
        raise NotExportable(f"cannot export {cfg.MODEL.META_ARCHITECTURE} yet: {blockers[0]}")


def build_streaming_step(model) -> StreamingStep:
    """
    The exportable step of a built model (in eval mode), sharing its modules.

    Raises:
        NotExportable: the model's meta-architecture has no step.
    """
    # The exact class: a subclass may detect otherwise (StaticEnsembleRCNN is a VideoRCNN).
    name = type(model).__name__
    if name not in _STEPS:
        raise NotExportable(
            f"{type(model).__module__}.{name}: no streaming step for it yet "
            f"(exportable: {', '.join(_STEPS)})"
        )
    return _STEPS[name](model)
