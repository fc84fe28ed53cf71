"""
A detectron2 ResNet cut in two at a block of one stage: a light part, run on every frame of a
key-frame method, and the rest, run on key frames only, so that the heavy path is the light part
followed by the rest and each part runs once per frame (LSTS, Jiang et al. ECCV 2020, §3.1, §4.2).

LSTS's "feature before conv4_3" is, in the authors' ResNet-101 symbol
(``lsts_rfcn/symbols/lsts_network_gaussian.py``, ``get_resnet_low_feature``), the sum of the
residual branch and the shortcut of block ``res4b3``, taken *before* that block's ReLU: the light
part is the stem, res2, res3 and the first four res4 blocks (``res4a``, ``res4b1``..``res4b3``,
detectron2's ``res4.0``..``res4.3``), and the rest (``get_resnet_high_feature``) starts with the
ReLU. (Counting conv4_1 = res4a, "before conv4_3" would read as two blocks; the code takes four.)
Here the cut is ``(stage, blocks)``: the light part ends after the first ``blocks`` blocks
of ``stage``, with or without the last one's ReLU.

The split backbone adopts the ResNet's modules under their own names, so its parameter names are
the ResNet's and pretrained detectron2 weights load unchanged. An R-FCN feature network
(:class:`~vod_d2.modeling.backbone.rfcn_resnet.RFCNResNet`) splits the same way, its feature
reduction ending the rest.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from torch import nn

from .rfcn_resnet import OUT_FEATURE as REDUCED_FEATURE
from .rfcn_resnet import RFCNResNet, build_deformable_resnet_backbone, build_rfcn_resnet_backbone

__all__ = ["SplitResNet", "build_split_resnet_backbone", "build_split_rfcn_resnet_backbone"]


def _pre_activation(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    ``block(x)`` without its final ReLU: residual branch + shortcut, as detectron2's
    :class:`BasicBlock` and :class:`BottleneckBlock` compute it, so that ``relu`` of the result is
    ``block(x)`` bit for bit.
    """
    out = F.relu_(block.conv1(x))
    if isinstance(block, BottleneckBlock):
        out = F.relu_(block.conv2(out))
        out = block.conv3(out)
    else:
        out = block.conv2(out)
    shortcut = x if block.shortcut is None else block.shortcut(x)
    return out + shortcut


class SplitResNet(Backbone):
    """
    A :class:`ResNet` whose forward is ``forward_rest(forward_light(x))``.

    ``forward_light`` returns the low-level feature (N, C_low, H/s, W/s) at the cut
    (:meth:`low_level_shape`); ``forward_rest`` maps it to the ResNet's output features. Their
    composition is the ResNet's forward exactly. Every output feature must be computed after the
    cut (the light part returns the low-level feature only).
    """

    def __init__(
        self, resnet: ResNet, *, stage: str = "res4", blocks: int = 4, pre_activation: bool = True
    ):
        """
        Args:
            resnet: a detection ResNet (no classifier); its modules are adopted, not copied.
            stage: the stage holding the cut ("res2".."res5").
            blocks: number of blocks of ``stage`` in the light part, 1..len(stage).
            pre_activation: the light part stops before the last block's final ReLU (the
                authors' cut); the rest then starts with that ReLU. Needs a detectron2
                ``BasicBlock`` or ``BottleneckBlock`` there.
        """
        super().__init__()
        if not isinstance(resnet, ResNet):
            raise TypeError(f"SplitResNet splits a detectron2 ResNet, got {type(resnet).__name__}")
        if resnet.num_classes is not None:
            raise ValueError("SplitResNet: the ResNet must have no classifier (num_classes=None)")
        if stage not in resnet.stage_names:
            raise ValueError(
                f"SplitResNet: cut stage {stage!r} is not one of the ResNet's stages "
                f"{resnet.stage_names} (MODEL.LSTS.LOW_LEVEL_STAGE)"
            )
        stage_blocks = list(getattr(resnet, stage).children())
        if not 1 <= blocks <= len(stage_blocks):
            raise ValueError(
                f"SplitResNet: {stage} has {len(stage_blocks)} blocks, the light part must take "
                f"1..{len(stage_blocks)} of them, got {blocks} (MODEL.LSTS.LOW_LEVEL_BLOCKS)"
            )
        last = stage_blocks[blocks - 1]
        if pre_activation and type(last) not in (BasicBlock, BottleneckBlock):
            raise ValueError(
                f"SplitResNet: a pre-activation cut needs a BasicBlock or BottleneckBlock at "
                f"{stage}.{blocks - 1}, got {type(last).__name__} "
                "(set MODEL.LSTS.LOW_LEVEL_PRE_ACTIVATION False)"
            )
        cut = resnet.stage_names.index(stage)
        light_stages = resnet.stage_names[:cut]
        inside = [f for f in resnet._out_features if f == "stem" or f in light_stages]
        if inside:
            raise ValueError(
                f"SplitResNet: output features {inside} lie inside the light part (cut after "
                f"{stage}.{blocks - 1}); only features after the cut can be returned"
            )

        self.stem = resnet.stem
        for name in resnet.stage_names:
            self.add_module(name, getattr(resnet, name))
        self.stage_names = resnet.stage_names
        self.cut_stage = stage
        self.cut_blocks = blocks
        self.pre_activation = pre_activation
        self._light_stages = light_stages
        self._rest_stages = resnet.stage_names[cut + 1 :]
        self._out_features = list(resnet._out_features)
        self._out_feature_channels = dict(resnet._out_feature_channels)
        self._out_feature_strides = dict(resnet._out_feature_strides)
        # An R-FCN feature network's reduction conv ends the rest (and names its one output).
        self.reduction = resnet.reduction if isinstance(resnet, RFCNResNet) else None
        light_blocks = [b for name in light_stages for b in getattr(self, name).children()]
        stride = self.stem.stride
        for block in light_blocks + stage_blocks[:blocks]:
            stride *= block.stride
        self._low_level_shape = ShapeSpec(channels=last.out_channels, stride=stride)

    def _light_blocks(self) -> List[nn.Module]:
        return list(getattr(self, self.cut_stage).children())[: self.cut_blocks]

    def _rest_blocks(self) -> List[nn.Module]:
        return list(getattr(self, self.cut_stage).children())[self.cut_blocks :]

    def forward_light(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, 3, H, W) normalised images.

        Returns:
            Tensor: (N, C_low, H / s, W / s) low-level feature at the cut (before the last
            block's ReLU when ``pre_activation``), ``C_low, s = low_level_shape()``.
        """
        if x.dim() != 4:
            raise ValueError(f"SplitResNet takes (N, C, H, W) images, got shape {tuple(x.shape)}")
        x = self.stem(x)
        for name in self._light_stages:
            x = getattr(self, name)(x)
        *blocks, last = self._light_blocks()
        for block in blocks:
            x = block(x)
        return _pre_activation(last, x) if self.pre_activation else last(x)

    def forward_rest(self, low: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            low (Tensor): (N, C_low, H / s, W / s) output of :meth:`forward_light`.

        Returns:
            dict[str, Tensor]: the ResNet's output features (``output_shape()``).
        """
        x = F.relu(low) if self.pre_activation else low
        for block in self._rest_blocks():
            x = block(x)
        outputs = {}
        if self.cut_stage in self._out_features:
            outputs[self.cut_stage] = x
        for name in self._rest_stages:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        if self.reduction is not None:
            return {REDUCED_FEATURE: F.relu(self.reduction(outputs["res5"]))}
        return outputs

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The whole ResNet (the heavy path): ``forward_rest(forward_light(x))``."""
        return self.forward_rest(self.forward_light(x))

    def low_level_shape(self) -> ShapeSpec:
        """Channels and stride of :meth:`forward_light`'s output."""
        return self._low_level_shape

    def output_shape(self) -> Dict[str, ShapeSpec]:
        if self.reduction is not None:
            stride = self._out_feature_strides["res5"]
            return {REDUCED_FEATURE: ShapeSpec(channels=self.reduction.out_channels, stride=stride)}
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _split(cfg, resnet: ResNet) -> SplitResNet:
    return SplitResNet(
        resnet,
        stage=cfg.MODEL.LSTS.LOW_LEVEL_STAGE,
        blocks=cfg.MODEL.LSTS.LOW_LEVEL_BLOCKS,
        pre_activation=cfg.MODEL.LSTS.LOW_LEVEL_PRE_ACTIVATION,
    )


@BACKBONE_REGISTRY.register()
def build_split_resnet_backbone(cfg, input_shape: ShapeSpec) -> SplitResNet:
    """detectron2's ResNet (``MODEL.RESNETS``) cut at ``MODEL.LSTS.LOW_LEVEL_*``."""
    return _split(cfg, build_deformable_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_split_rfcn_resnet_backbone(cfg, input_shape: ShapeSpec) -> SplitResNet:
    """The R-FCN feature network (``build_rfcn_resnet_backbone``) cut at MODEL.LSTS.LOW_LEVEL_*."""
    return _split(cfg, build_rfcn_resnet_backbone(cfg, input_shape))
