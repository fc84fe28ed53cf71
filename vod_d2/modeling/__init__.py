"""Models of vod_d2: meta-architectures and temporal aggregation modules."""

from . import flow  # noqa: F401  (registers the flow networks)
from .meta_arch import FeatureWindow, VideoRCNN
from .temporal import TEMPORAL_AGGREGATION_REGISTRY, build_temporal_aggregation

__all__ = [
    "FeatureWindow",
    "VideoRCNN",
    "TEMPORAL_AGGREGATION_REGISTRY",
    "build_temporal_aggregation",
]
