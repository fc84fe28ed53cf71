"""
Sparse R-CNN's iterative dynamic head (Sun et al., CVPR 2021, §3): learnable proposals refined
by a cascade of :class:`SparseRCNNStage` s over the FPN maps, and its set-prediction inference.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, Instances
from torch import nn

from .proposals import LearnableProposals
from .stage import SparseRCNNStage

__all__ = ["StageOutput", "SparseRCNNHead", "sparse_rcnn_inference"]

# (stage index, (B * N, d, S, S) RoI features, the B images' boxes) -> new RoI features.
RoIHook = Callable[[int, torch.Tensor, List[Boxes]], torch.Tensor]
# (stage index, (B, N, d) object features) -> new object features.
ObjectHook = Callable[[int, torch.Tensor], torch.Tensor]


class StageOutput(NamedTuple):
    """What one stage predicts for B images of N proposals each."""

    logits: torch.Tensor  # (B, N, K) class logits (one sigmoid per class)
    boxes: torch.Tensor  # (B, N, 4) boxes (x0, y0, x1, y1) in the network input's pixels
    object_features: torch.Tensor  # (B, N, d) output of the instance interaction (§3.3)


class SparseRCNNHead(nn.Module):
    """
    The learnable proposals and the iterative stages of Sparse R-CNN. Stage ``i`` pools the RoI
    features of its input boxes from the FPN maps (RoIAlign on the level of each box's size),
    and its refined boxes, with the gradient stopped, are the input boxes of stage ``i + 1``;
    its FFN output is the proposal features of stage ``i + 1``. The proposal width d is the FPN
    maps' width.

    Subclasses transform the RoI features or the object features of each stage through the two
    hooks of :meth:`iterate` (SparseVOD's TFE and SPFA).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        pooler: ROIPooler,
        proposals: LearnableProposals,
        stages: List[SparseRCNNStage],
    ):
        """
        Args:
            in_features: names of the FPN maps the RoIs are pooled from, finest first.
            pooler: pools (d, S, S) RoI features from those maps.
            proposals: the N learnable proposal boxes and features.
            stages: the iterative stages (paper: 6), applied in order.
        """
        super().__init__()
        if not stages:
            raise ValueError("MODEL.SPARSE_RCNN.NUM_STAGES must be >= 1")
        self.in_features = list(in_features)
        self.pooler = pooler
        self.proposals = proposals
        self.stages = nn.ModuleList(stages)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {missing} are not backbone outputs "
                f"({sorted(input_shape)})"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {in_features} must share one width, got {channels}"
            )
        dim = channels.pop()
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        sr = cfg.MODEL.SPARSE_RCNN
        return {
            "in_features": in_features,
            "pooler": ROIPooler(
                output_size=resolution,
                scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            ),
            "proposals": LearnableProposals(sr.NUM_PROPOSALS, dim),
            "stages": [
                SparseRCNNStage(
                    dim,
                    cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                    num_heads=sr.NUM_HEADS,
                    dim_feedforward=sr.DIM_FEEDFORWARD,
                    dropout=sr.DROPOUT,
                    dynamic_dim=sr.DIM_DYNAMIC,
                    pooler_resolution=resolution,
                    num_cls_layers=sr.NUM_CLS_LAYERS,
                    num_reg_layers=sr.NUM_REG_LAYERS,
                    prior_prob=sr.PRIOR_PROB,
                )
                for _ in range(sr.NUM_STAGES)
            ],
        }

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def _maps(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"the head needs the FPN maps {missing}; got {sorted(features)}")
        return [features[f] for f in self.in_features]

    def iterate(
        self,
        features: Dict[str, torch.Tensor],
        image_sizes: List[Tuple[int, int]],
        roi_hook: Optional[RoIHook] = None,
        object_hook: Optional[ObjectHook] = None,
    ) -> List[StageOutput]:
        """
        Runs every stage on B images.

        Args:
            features: FPN maps by name, each (B, d, H_l, W_l).
            image_sizes: (height, width) of each image, without padding; the initial proposals
                span them.
            roi_hook: if given, replaces each stage's pooled RoI features.
            object_hook: if given, replaces each stage's object features before its FFN.

        Returns:
            list[StageOutput]: one per stage, in order.
        """
        maps = self._maps(features)
        boxes, proposal_features = self.proposals(image_sizes)
        outputs = []
        for i, stage in enumerate(self.stages):
            proposal_features = stage.attend(proposal_features)
            box_lists = [Boxes(b) for b in boxes]
            rois = self.pooler(maps, box_lists)
            if roi_hook is not None:
                rois = roi_hook(i, rois, box_lists)
            objects = stage.interact(proposal_features, rois)
            if object_hook is not None:
                objects = object_hook(i, objects)
            logits, refined, proposal_features = stage.predict(objects, boxes)
            outputs.append(StageOutput(logits, refined, objects))
            boxes = refined.detach()
        return outputs

    def forward(self, features, image_sizes):
        """Single-frame Sparse R-CNN: :meth:`iterate` without hooks."""
        return self.iterate(features, image_sizes)


def sparse_rcnn_inference(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    image_sizes: List[Tuple[int, int]],
    num_detections: int,
) -> List[Instances]:
    """
    Set-prediction inference without NMS: the ``num_detections`` best (proposal, class) pairs
    by sigmoid score, so a proposal may be reported under several classes (Sparse R-CNN keeps
    the top 100 of the N x K pairs).

    Args:
        logits (Tensor): (B, N, K) class logits of the last stage.
        boxes (Tensor): (B, N, 4) its boxes (x0, y0, x1, y1) in the network input's pixels.
        image_sizes: (height, width) of each image.
        num_detections: detections per image (at most N * K are returned).

    Returns:
        list[Instances]: per image, ``pred_boxes``, ``scores`` and ``pred_classes``, by score.
    """
    results = []
    num_classes = logits.shape[2]
    for scores, image_boxes, size in zip(logits.sigmoid(), boxes, image_sizes):
        top, index = scores.flatten().topk(min(num_detections, scores.numel()))
        result = Instances(size)
        result.pred_boxes = Boxes(image_boxes[index // num_classes])
        result.scores = top
        result.pred_classes = index % num_classes
        results.append(result)
    return results
