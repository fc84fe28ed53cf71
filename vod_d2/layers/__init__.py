"""Ops of the temporal methods: autograd wrappers of ``vod_d2._C`` and pure-PyTorch references."""

from .deform_conv import (
    DeformConv,
    DeformConv2d,
    check_deform_conv2d_inputs,
    use_torchvision_deform_convs,
)
from .deform_psroi_pool import DeformPSRoIPool, deform_ps_roi_pool, deform_ps_roi_pool_reference
from .deform_sampling import (
    DeformableSimilaritySampling,
    deformable_similarity_sampling,
    deformable_similarity_sampling_reference,
)
from .match_trans import (
    MatchTransAlign,
    local_aggregate,
    local_aggregate_reference,
    local_correlation,
    local_correlation_reference,
)
from .temporal_roi_align import TemporalRoIAlign, temporal_roi_align, temporal_roi_align_reference

__all__ = [
    "DeformConv",
    "DeformConv2d",
    "DeformPSRoIPool",
    "DeformableSimilaritySampling",
    "MatchTransAlign",
    "TemporalRoIAlign",
    "check_deform_conv2d_inputs",
    "deform_ps_roi_pool",
    "deform_ps_roi_pool_reference",
    "deformable_similarity_sampling",
    "deformable_similarity_sampling_reference",
    "local_aggregate",
    "local_aggregate_reference",
    "local_correlation",
    "local_correlation_reference",
    "temporal_roi_align",
    "temporal_roi_align_reference",
    "use_torchvision_deform_convs",
]
