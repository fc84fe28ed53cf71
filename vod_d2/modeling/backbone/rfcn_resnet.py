"""
The feature network of the R-FCN video detectors: a stride-16 ResNet and the feature reduction.

STSN §4.1, Impression Network §3.3 and the DFF/FGFA code all end the ResNet with a randomly
initialised 1024-channel 3x3 conv + ReLU on a res5 whose stride is 16 (stride 1 and dilation 2
in res5, detectron2's ``RES5_DILATION: 2``). That map is the one the temporal modules aggregate
and the heads split between RPN and R-FCN (:mod:`vod_d2.modeling.roi_heads.rfcn`).
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet, build_resnet_backbone
from detectron2.modeling.backbone.resnet import BottleneckBlock, CNNBlockBase, DeformBottleneckBlock
from torch import nn

from ...layers.deform_conv import use_torchvision_deform_convs

__all__ = ["RFCNResNet", "build_deformable_resnet_backbone", "build_rfcn_resnet_backbone"]

OUT_FEATURE = "res5_reduced"


class RFCNResNet(ResNet):
    """
    A ResNet whose only output, ``"res5_reduced"``, is ``ReLU(conv3x3(res5))`` with
    ``reduction_channels`` channels at the stride of res5.

    It subclasses detectron2's :class:`ResNet`, so its parameters keep ResNet's names
    (``stem.conv1.weight``, ``res2.0.conv1.weight``, ...): ImageNet weights
    (``MODEL.WEIGHTS``, e.g. ``detectron2://ImageNetPretrained/MSRA/R-101.pkl``) and detectron2
    checkpoints load into the ResNet part as they load into detectron2's own backbone. Only
    ``reduction.weight`` and ``reduction.bias`` are new.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: List[List[CNNBlockBase]],
        *,
        reduction_channels: int,
        reduction_dilation: int = 1,
        freeze_at: int = 0,
    ):
        """
        Args:
            stem, stages, freeze_at: as in :class:`ResNet`; all four stages are used.
            reduction_channels: output channels of the feature-reduction conv (papers: 1024).
            reduction_dilation: its dilation (the DFF/FGFA code: 6); padding keeps the size.
        """
        super().__init__(stem, stages, out_features=["res5"], freeze_at=freeze_at)
        self.reduction = Conv2d(
            self._out_feature_channels["res5"],
            reduction_channels,
            kernel_size=3,
            padding=reduction_dilation,
            dilation=reduction_dilation,
        )
        # As the reference code initialises it (the ResNet's own layers come pretrained).
        nn.init.normal_(self.reduction.weight, std=0.01)
        nn.init.zeros_(self.reduction.bias)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, 3, H, W) normalised images.

        Returns:
            dict: ``{"res5_reduced": (N, reduction_channels, H / s, W / s)}``, s the res5 stride.
        """
        return {OUT_FEATURE: F.relu(self.reduction(super().forward(x)["res5"]))}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            OUT_FEATURE: ShapeSpec(
                channels=self.reduction.out_channels, stride=self._out_feature_strides["res5"]
            )
        }


@BACKBONE_REGISTRY.register()
def build_deformable_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """
    detectron2's ``build_resnet_backbone``, its deformable convs
    (``MODEL.RESNETS.DEFORM_ON_PER_STAGE``) computed by torchvision, so that they run on the CPU
    as well as CUDA; parameter names and shapes are detectron2's.
    """
    return use_torchvision_deform_convs(build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_rfcn_resnet_backbone(cfg, input_shape: ShapeSpec) -> RFCNResNet:
    """
    detectron2's ResNet of ``cfg.MODEL.RESNETS`` (depth, ``RES5_DILATION``, deformable stages,
    ``MODEL.BACKBONE.FREEZE_AT``) followed by the feature reduction of ``cfg.MODEL.RFCN``. Its
    deformable convs are computed by torchvision (:mod:`vod_d2.layers.deform_conv`), so they
    run on the CPU too, with detectron2's parameter names.
    """
    out_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    if out_features != ["res5"]:
        raise ValueError(
            f"build_rfcn_resnet_backbone reduces res5 alone: MODEL.RESNETS.OUT_FEATURES must be "
            f'["res5"], got {out_features}'
        )
    # detectron2's builder makes (and freezes) the blocks; RFCNResNet re-assembles the same
    # modules under the same names.
    resnet = build_resnet_backbone(cfg, input_shape)
    stages = [list(stage) for stage in resnet.stages]
    last = cfg.MODEL.RFCN.DEFORM_RES4_LAST_BLOCKS
    if last:
        stages[2][-last:] = [_deformable(cfg, block) for block in stages[2][-last:]]
    return use_torchvision_deform_convs(
        RFCNResNet(
            resnet.stem,
            stages,
            reduction_channels=cfg.MODEL.RFCN.REDUCTION_CHANNELS,
            reduction_dilation=cfg.MODEL.RFCN.REDUCTION_DILATION,
        )
    )


def _deformable(cfg, block: nn.Module) -> DeformBottleneckBlock:
    """
    A bottleneck block of res4 made deformable: its 3x3 conv becomes a deformable conv with its
    offset conv (zero-initialised, so the block starts as the plain one); the
    other layers keep their names, so pretrained weights load. detectron2 turns deformable
    convs on per stage only; this gives the Deformable ConvNets setting of "6 deformable
    layers" (res4's last 3 blocks and res5's 3, Dai et al. 2017 Table 1) that STSN uses.
    """
    if not isinstance(block, BottleneckBlock):
        raise ValueError(
            f"MODEL.RFCN.DEFORM_RES4_LAST_BLOCKS makes bottleneck blocks deformable, got "
            f"{type(block).__name__} (MODEL.RESNETS.DEPTH >= 50)"
        )
    r = cfg.MODEL.RESNETS
    deformable = DeformBottleneckBlock(
        block.in_channels,
        block.out_channels,
        bottleneck_channels=block.conv1.out_channels,
        stride=block.stride,
        num_groups=block.conv2.groups,
        norm=r.NORM,
        stride_in_1x1=r.STRIDE_IN_1X1,
        dilation=block.conv2.dilation[0],
        deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
    )
    if any(not p.requires_grad for p in block.parameters()):
        deformable.freeze()
    return deformable
