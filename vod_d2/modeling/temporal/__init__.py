"""Temporal modules (aggregation and key-frame memories); importing this package registers them."""

from .build import (
    TEMPORAL_AGGREGATION_REGISTRY,
    TemporalAggregation,
    TemporalModule,
    build_temporal_aggregation,
)
from .impression import ImpressionKeyFrames, ImpressionMemory
from .key_frame import KEY_FRAME_REGISTRY, KeyFrameModule, build_key_frame_module
from .lsts import (
    LSTS,
    DenseFeatureAggregation,
    LSTSFeatureFusion,
    LSTSKeyFrames,
    SparseRecursiveFeatureUpdate,
    TransformUnit,
    lsts_optimizer_overrides,
)
from .single_frame import SingleFrameAggregation
from .stmn import STMNAggregation, STMNSingleFrameAggregation
from .stsn import SpatioTemporalSamplingBlock, SSNAggregation, STSNAggregation

__all__ = [
    "TEMPORAL_AGGREGATION_REGISTRY",
    "TemporalAggregation",
    "TemporalModule",
    "build_temporal_aggregation",
    "KEY_FRAME_REGISTRY",
    "KeyFrameModule",
    "build_key_frame_module",
    "ImpressionKeyFrames",
    "ImpressionMemory",
    "LSTS",
    "DenseFeatureAggregation",
    "LSTSFeatureFusion",
    "LSTSKeyFrames",
    "SparseRecursiveFeatureUpdate",
    "TransformUnit",
    "lsts_optimizer_overrides",
    "SingleFrameAggregation",
    "STMNAggregation",
    "STMNSingleFrameAggregation",
    "SpatioTemporalSamplingBlock",
    "SSNAggregation",
    "STSNAggregation",
]
