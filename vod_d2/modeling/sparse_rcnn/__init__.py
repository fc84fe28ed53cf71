"""
Sparse R-CNN (Sun et al., CVPR 2021) and SparseVOD's Temporal Dynamic Head (Hashmi et al.,
BMVC 2022): learnable proposals, the iterative dynamic head, the set-prediction loss, TFE and
SPFA, and the meta-architectures SparseRCNN and SparseVOD
(registered in detectron2's META_ARCH_REGISTRY).
"""

from .criterion import HungarianMatcher, SetCriterion
from .head import SparseRCNNHead, StageOutput, sparse_rcnn_inference
from .meta_arch import PastFramesSupport, SparseRCNN, SparseVOD
from .proposals import LearnableProposals
from .stage import DynamicInstanceInteraction, SparseRCNNStage
from .temporal import SemanticProposalAggregation, TemporalFeatureExtraction
from .temporal_head import TemporalDynamicHead

__all__ = [
    "DynamicInstanceInteraction",
    "HungarianMatcher",
    "LearnableProposals",
    "PastFramesSupport",
    "SemanticProposalAggregation",
    "SetCriterion",
    "SparseRCNN",
    "SparseRCNNHead",
    "SparseRCNNStage",
    "SparseVOD",
    "StageOutput",
    "TemporalDynamicHead",
    "TemporalFeatureExtraction",
    "sparse_rcnn_inference",
]
