"""Models of vod_d2: the streaming core, meta-architectures and temporal modules."""

from . import backbone, flow, roi_heads, sparse_rcnn  # noqa: F401  (registration)
from .frames import (
    FrameInfo,
    GlobalSupport,
    KeySegmentSupport,
    NoSupport,
    SupportPolicy,
    WindowSupport,
)
from .meta_arch import KeyFrameRCNN, VideoDetector, VideoRCNN
from .temporal import (
    TEMPORAL_AGGREGATION_REGISTRY,
    TemporalAggregation,
    TemporalModule,
    build_temporal_aggregation,
)

__all__ = [
    "FrameInfo",
    "GlobalSupport",
    "KeySegmentSupport",
    "NoSupport",
    "SupportPolicy",
    "WindowSupport",
    "KeyFrameRCNN",
    "VideoDetector",
    "VideoRCNN",
    "TEMPORAL_AGGREGATION_REGISTRY",
    "TemporalAggregation",
    "TemporalModule",
    "build_temporal_aggregation",
]
