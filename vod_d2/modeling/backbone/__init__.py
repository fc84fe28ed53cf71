"""Backbones of vod_d2, registered in detectron2's BACKBONE_REGISTRY."""

from .rfcn_resnet import RFCNResNet, build_rfcn_resnet_backbone

__all__ = ["RFCNResNet", "build_rfcn_resnet_backbone"]
