"""Temporal aggregation modules; importing this package registers them."""

from .build import (
    TEMPORAL_AGGREGATION_REGISTRY,
    TemporalAggregation,
    TemporalModule,
    build_temporal_aggregation,
)
from .lsts import (
    LSTS,
    DenseFeatureAggregation,
    LSTSFeatureFusion,
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
    "LSTS",
    "DenseFeatureAggregation",
    "LSTSFeatureFusion",
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
