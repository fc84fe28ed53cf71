"""Backbones of vod_d2; importing this package registers them in detectron2's BACKBONE_REGISTRY."""

from .rfcn_resnet import RFCNResNet, build_deformable_resnet_backbone, build_rfcn_resnet_backbone
from .split_resnet import SplitResNet, build_split_resnet_backbone, build_split_rfcn_resnet_backbone

__all__ = [
    "RFCNResNet",
    "build_deformable_resnet_backbone",
    "build_rfcn_resnet_backbone",
    "SplitResNet",
    "build_split_resnet_backbone",
    "build_split_rfcn_resnet_backbone",
]
