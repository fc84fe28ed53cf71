"""R-FCN and deformable R-FCN heads, registered in ROI_HEADS_REGISTRY and RPN_HEAD_REGISTRY."""

from .position_sensitive import PSRoIOffsets, position_sensitive_pool
from .rfcn import RFCNOutputLayers, RFCNROIHeads, RFCNRPNHead, rfcn_features, rpn_features

__all__ = [
    "PSRoIOffsets",
    "RFCNOutputLayers",
    "RFCNROIHeads",
    "RFCNRPNHead",
    "position_sensitive_pool",
    "rfcn_features",
    "rpn_features",
]
