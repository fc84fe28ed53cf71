"""
R-FCN (Dai et al., NeurIPS 2016) and deformable R-FCN (Dai et al., ICCV 2017) heads, the
detection network of STSN, STMN, LSTS and Impression Network.

The heads read one map (``MODEL.ROI_HEADS.IN_FEATURES``, the temporally aggregated 1024-channel
feature reduction of :mod:`vod_d2.modeling.backbone.rfcn_resnet`). As in STSN §4.1 and
Impression §3.3, the RPN reads its first half of the channels and R-FCN the second half
(``MODEL.RFCN.SPLIT_FEATURES``); the split happens inside :class:`RFCNRPNHead` and
:class:`RFCNROIHeads`, so the meta-architecture and the temporal modules see one map.

R-FCN itself (:class:`RFCNOutputLayers`): two 1x1 convs map the features to k x k groups of
position-sensitive score maps, ``k^2 (C + 1)`` for the classes and ``4 k^2`` for a
class-agnostic box (the DFF/FGFA code regresses one box for the background and one for all
objects; only the latter is trained, so it is the one kept here). Bin (i, j) of a RoI is pooled
from the (i, j)-th maps alone (position-sensitive RoIAlign, ``torchvision.ops.ps_roi_align``),
and the k^2 bins vote by averaging: (R, C + 1) class scores and (R, 4) box deltas. Losses,
box decoding and NMS are detectron2's :class:`FastRCNNOutputLayers`; optional online hard
example mining keeps the B RoIs of each image with the largest loss (R-FCN §3, LSTS §4.2).
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, ROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from fvcore.nn import smooth_l1_loss
from torch import nn

from .position_sensitive import PSRoIOffsets, position_sensitive_pool

__all__ = ["RFCNOutputLayers", "RFCNROIHeads", "RFCNRPNHead", "rpn_features", "rfcn_features"]


def _head_channels(channels: int, split: bool) -> int:
    """Channels each head reads of a ``channels``-wide map (half of it when ``split``)."""
    if not split:
        return channels
    if channels % 2:
        raise ValueError(
            f"MODEL.RFCN.SPLIT_FEATURES halves the heads' map between RPN and R-FCN, which needs "
            f"an even number of channels: the map has {channels}"
        )
    return channels // 2


def rpn_features(x: torch.Tensor, split: bool) -> torch.Tensor:
    """The RPN's part of an (N, C, H, W) map: its first C/2 channels, or all of them."""
    return x[:, : x.shape[1] // 2] if split else x


def rfcn_features(x: torch.Tensor, split: bool) -> torch.Tensor:
    """R-FCN's part of an (N, C, H, W) map: its last C/2 channels, or all of them."""
    return x[:, x.shape[1] // 2 :] if split else x


@RPN_HEAD_REGISTRY.register()
class RFCNRPNHead(StandardRPNHead):
    """
    detectron2's :class:`StandardRPNHead` on the RPN's part of its input map
    (:func:`rpn_features`). The papers' code puts the 1x1 objectness and box convs straight on
    those channels, which ``MODEL.RPN.CONV_DIMS: []`` gives (no 3x3 conv).
    """

    @configurable
    def __init__(self, *, split_features: bool, **kwargs):
        """
        Args:
            split_features: read the first half of the input channels (else all of them).
            kwargs: arguments of :class:`StandardRPNHead`, ``in_channels`` the part's width.
        """
        super().__init__(**kwargs)
        self.split_features = split_features

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        split = cfg.MODEL.RFCN.SPLIT_FEATURES
        ret["in_channels"] = _head_channels(ret["in_channels"], split)
        ret["split_features"] = split
        return ret

    def forward(self, features: List[torch.Tensor]):
        """See :meth:`StandardRPNHead.forward`; each (N, C, H, W) map is cut to its RPN part."""
        return super().forward([rpn_features(x, self.split_features) for x in features])


class RFCNOutputLayers(FastRCNNOutputLayers):
    """
    R-FCN's per-RoI predictions: position-sensitive score maps, pooled bin by bin and averaged.

    A :class:`FastRCNNOutputLayers` whose ``cls_score`` and ``bbox_pred`` are 1x1 convs on the
    feature map instead of fully connected layers on pooled features: ``forward`` takes the map
    and the boxes. ``losses``, ``inference`` and the box decoding are inherited (detectron2's
    cross-entropy and smooth-L1 losses, ``fast_rcnn_inference``), with OHEM in front of the
    losses when ``ohem_batch_size_per_image`` > 0.

    With ``deformable``, the k x k bins of each RoI are shifted by learned offsets (deformable
    position-sensitive RoI pooling, Dai et al. 2017, §2.2): the classes have one set of
    offsets each and the box one, as in the paper's code (:class:`PSRoIOffsets`).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        group_size: int,
        sampling_ratio: int = 0,
        deformable: bool = False,
        deformable_gamma: float = 0.1,
        ohem_batch_size_per_image: int = 0,
        **kwargs,
    ):
        """
        Args:
            input_shape: channels and stride of the R-FCN part of the heads' map.
            group_size: k, the RoI bins per side, each with its own score maps.
            sampling_ratio: bilinear samples per bin side; 0 adapts it to the bin's size.
            deformable: deformable position-sensitive RoI pooling instead of the plain one.
            deformable_gamma: scale of the normalised offsets (paper: 0.1).
            ohem_batch_size_per_image: B > 0 keeps the B hardest RoIs of each image in the
                loss (online hard example mining); 0 keeps every sampled RoI.
            kwargs: arguments of :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        if ohem_batch_size_per_image < 0:
            raise ValueError(
                f"ohem_batch_size_per_image must be >= 0 (0: no OHEM), "
                f"got {ohem_batch_size_per_image}"
            )
        if ohem_batch_size_per_image and self.box_reg_loss_type != "smooth_l1":
            raise ValueError(
                f"MODEL.RFCN.OHEM ranks RoIs by their smooth-L1 box loss, but "
                f"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE is {self.box_reg_loss_type!r}"
            )
        self.group_size = group_size
        self.spatial_scale = 1.0 / input_shape.stride
        self.sampling_ratio = sampling_ratio
        self.deformable_gamma = deformable_gamma
        self.ohem_batch_size_per_image = ohem_batch_size_per_image

        channels, bins = input_shape.channels, group_size * group_size
        num_box_outputs = self.bbox_pred.out_features
        # The fully connected predictors of the parent become 1x1 convs to k^2 score maps per
        # output, initialised as in the reference code.
        self.cls_score = Conv2d(channels, (self.num_classes + 1) * bins, kernel_size=1)
        self.bbox_pred = Conv2d(channels, num_box_outputs * bins, kernel_size=1)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        offsets = dict(
            output_size=group_size, spatial_scale=self.spatial_scale, sampling_ratio=sampling_ratio
        )
        self.cls_offsets = (
            PSRoIOffsets(channels, self.num_classes + 1, **offsets) if deformable else None
        )
        self.bbox_offsets = PSRoIOffsets(channels, 1, **offsets) if deformable else None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        rfcn = cfg.MODEL.RFCN
        if rfcn.OHEM and rfcn.OHEM_BATCH_SIZE_PER_IMAGE < 1:
            raise ValueError(
                f"MODEL.RFCN.OHEM keeps MODEL.RFCN.OHEM_BATCH_SIZE_PER_IMAGE RoIs per image, "
                f"which must be >= 1: got {rfcn.OHEM_BATCH_SIZE_PER_IMAGE}"
            )
        ret.update(
            {
                "group_size": rfcn.GROUP_SIZE,
                "sampling_ratio": rfcn.POOLER_SAMPLING_RATIO,
                "deformable": rfcn.DEFORMABLE,
                "deformable_gamma": rfcn.DEFORMABLE_GAMMA,
                "ohem_batch_size_per_image": rfcn.OHEM_BATCH_SIZE_PER_IMAGE if rfcn.OHEM else 0,
            }
        )
        return ret

    def forward(self, x: torch.Tensor, boxes: List[Boxes]) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, H, W) the R-FCN part of the heads' map.
            boxes (list[Boxes]): the RoIs of each of the N images, in image coordinates.

        Returns:
            (Tensor, Tensor): (R, K + 1) class scores and (R, 4) (class-agnostic) or (R, 4 K)
            box deltas of the R RoIs of all images in order, each the mean of its k x k bins.
        """
        # Boxes are float32: the pooling wants the features' dtype (float16, float64).
        rois = convert_boxes_to_pooler_format(boxes).to(x.dtype)
        scores = self._vote(self.cls_score(x), rois, x, self.cls_offsets)
        deltas = self._vote(self.bbox_pred(x), rois, x, self.bbox_offsets)
        return scores, deltas

    def _vote(
        self,
        score_maps: torch.Tensor,
        rois: torch.Tensor,
        x: torch.Tensor,
        offset_branch: Optional[nn.Module],
    ) -> torch.Tensor:
        """(N, G k^2, H, W) score maps -> (R, G): position-sensitive pooling, then the mean."""
        offsets = None if offset_branch is None else offset_branch(x, rois)
        pooled = position_sensitive_pool(
            score_maps,
            rois,
            self.group_size,
            self.spatial_scale,
            self.sampling_ratio,
            offsets=offsets,
            gamma=self.deformable_gamma,
        )
        return pooled.mean(dim=(2, 3))

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """
        detectron2's Fast R-CNN losses, over the hardest RoIs of each image with OHEM.

        Args:
            predictions: the output of :meth:`forward`.
            proposals: the sampled RoIs of each image, with ``gt_classes`` (and ``gt_boxes``).
        """
        if self.ohem_batch_size_per_image:
            keep = self.hard_examples(predictions, proposals)
            starts = torch.tensor([0] + [len(p) for p in proposals[:-1]]).cumsum(0).tolist()
            flat = cat([k + start for k, start in zip(keep, starts)])
            predictions = tuple(p[flat] for p in predictions)
            proposals = [p[k] for p, k in zip(proposals, keep)]
        return super().losses(predictions, proposals)

    @torch.no_grad()
    def hard_examples(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """
        The RoIs OHEM trains on: in each image, the ``ohem_batch_size_per_image`` with the
        largest loss, classification plus box regression (weighted as in :meth:`losses`).

        Returns:
            list[Tensor]: for each image, the indices of its kept RoIs, hardest first.
        """
        scores, deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals])
        loss = F.cross_entropy(scores, gt_classes, reduction="none", ignore_index=-1)
        loss = loss * self.loss_weight.get("loss_cls", 1.0)
        fg = ((gt_classes >= 0) & (gt_classes < self.num_classes)).nonzero()[:, 0]
        if len(fg):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])[fg]
            # As in the parent's losses, an image without ground truth has no foreground.
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
            )[fg]
            box_dim = proposal_boxes.shape[1]
            if deltas.shape[1] == box_dim:
                fg_deltas = deltas[fg]
            else:
                fg_deltas = deltas.view(-1, self.num_classes, box_dim)[fg, gt_classes[fg]]
            targets = self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)
            box_loss = smooth_l1_loss(fg_deltas, targets, self.smooth_l1_beta, reduction="none")
            # The parent divides both losses by the number of RoIs, so per RoI they add up.
            loss[fg] += box_loss.sum(dim=1) * self.loss_weight.get("loss_box_reg", 1.0)
        return [
            per_image.topk(min(self.ohem_batch_size_per_image, len(per_image))).indices
            for per_image in loss.split([len(p) for p in proposals])
        ]


@ROI_HEADS_REGISTRY.register()
class RFCNROIHeads(ROIHeads):
    """
    R-FCN ROI heads: detectron2's proposal matching and sampling (:class:`ROIHeads`), then
    :class:`RFCNOutputLayers` on the R-FCN part of one map (:func:`rfcn_features`). Boxes
    only: R-FCN has no mask or keypoint head.
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        split_features: bool,
        box_predictor: RFCNOutputLayers,
        **kwargs,
    ):
        """
        Args:
            in_feature: the map the heads read.
            split_features: R-FCN reads its last half of the channels (else all of them).
            box_predictor: position-sensitive score maps, voting, losses and inference.
            kwargs: arguments of :class:`ROIHeads` (matcher, sampling, number of classes).
        """
        super().__init__(**kwargs)
        self.in_feature = in_feature
        self.split_features = split_features
        self.box_predictor = box_predictor

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(
                f"RFCNROIHeads reads one map: MODEL.ROI_HEADS.IN_FEATURES must name one of "
                f"{sorted(input_shape)}, got {in_features}"
            )
        if cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
            raise ValueError(
                "RFCNROIHeads predicts boxes only: set MODEL.MASK_ON and "
                "MODEL.KEYPOINT_ON to False"
            )
        shape = input_shape[in_features[0]]
        split = cfg.MODEL.RFCN.SPLIT_FEATURES
        channels = _head_channels(shape.channels, split)
        ret = super().from_config(cfg)
        ret.update(
            {
                "in_feature": in_features[0],
                "split_features": split,
                "box_predictor": RFCNOutputLayers(
                    cfg, ShapeSpec(channels=channels, stride=shape.stride)
                ),
            }
        )
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """See :meth:`ROIHeads.forward`: losses in training, detections otherwise."""
        del images
        if self.training:
            if not targets:
                raise ValueError("RFCNROIHeads needs the targets in training")
            proposals = self.label_and_sample_proposals(proposals, targets)
        x = rfcn_features(features[self.in_feature], self.split_features)
        predictions = self.box_predictor(x, [p.proposal_boxes for p in proposals])
        if self.training:
            return proposals, self.box_predictor.losses(predictions, proposals)
        instances, _ = self.box_predictor.inference(predictions, proposals)
        return instances, {}
