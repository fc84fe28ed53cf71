"""Backbones of vod_d2; importing this package registers them in detectron2's BACKBONE_REGISTRY."""

from .split_resnet import SplitResNet, build_split_resnet_backbone

__all__ = ["SplitResNet", "build_split_resnet_backbone"]
