"""SparseVOD's Temporal Dynamic Head (Hashmi et al., BMVC 2022, §3.1, Fig. 2)."""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import nn

from ..temporal.gate import GateSpec
from .head import ObjectHook, RoIHook, SparseRCNNHead, StageOutput
from .temporal import SemanticProposalAggregation, TemporalFeatureExtraction

__all__ = ["TemporalDynamicHead"]


class TemporalDynamicHead(SparseRCNNHead):
    """
    Sparse R-CNN's iterative head with, in every stage, TFE in place of the target's RoIAlign
    and SPFA between the instance interaction and the FFN:

    1. self-attention among the target's proposals;
    2. RoI features ``P_t`` of its boxes on the target's maps, fused by TFE with their most
       similar features in the T support frames' maps (same FPN level);
    3. the instance interaction of the proposal features with them: the temporal object
       features;
    4. SPFA: these attend to the support frames' object features of the same stage;
    5. FFN, class and box predictions; the next stage's boxes and proposal features.

    The support frames' object features come from the same stages run on each support frame
    alone (:meth:`support_object_features`, a single-frame Sparse R-CNN pass with shared
    weights: "the support frames' own instance interactive heads"). They depend on the support
    frame only, so a video's support frames are processed once, whatever the number of targets.

    With TFE and SPFA both off this is :class:`SparseRCNNHead`, and the stages' parameter
    names are the same, so a single-frame Sparse R-CNN checkpoint loads into it (TFE and SPFA
    parameters aside).
    """

    @configurable
    def __init__(
        self,
        *,
        tfe: Optional[List[TemporalFeatureExtraction]] = None,
        spfa: Optional[List[SemanticProposalAggregation]] = None,
        **kwargs,
    ):
        """
        Args:
            tfe: one TFE per stage, or None for RoIAlign on the target alone (Table 2).
            spfa: one SPFA per stage, or None for no proposal aggregation (Table 2).
            kwargs: the arguments of :class:`SparseRCNNHead`.
        """
        super().__init__(**kwargs)
        for name, modules in (("TFE", tfe), ("SPFA", spfa)):
            if modules is not None and len(modules) != self.num_stages:
                raise ValueError(f"{len(modules)} {name} modules for {self.num_stages} stages")
        self.tfe = nn.ModuleList(tfe) if tfe is not None else None
        self.spfa = nn.ModuleList(spfa) if spfa is not None else None

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        dim = input_shape[ret["in_features"][0]].channels
        num_stages = cfg.MODEL.SPARSE_RCNN.NUM_STAGES
        tfe, spfa = cfg.MODEL.SPARSEVOD.TFE, cfg.MODEL.SPARSEVOD.SPFA
        ret["tfe"] = (
            [
                TemporalFeatureExtraction(
                    dim,
                    k=tfe.TOP_K,
                    num_heads=tfe.NUM_HEADS,
                    aggregation=tfe.AGGREGATION,
                    identity_init=cfg.MODEL.VIDEO.IDENTITY_INIT,
                    gate=GateSpec.from_config(cfg),
                )
                for _ in range(num_stages)
            ]
            if tfe.ENABLED
            else None
        )
        ret["spfa"] = (
            [
                SemanticProposalAggregation(
                    dim,
                    num_heads=spfa.NUM_HEADS,
                    aggregation=spfa.AGGREGATION,
                    dropout=cfg.MODEL.SPARSE_RCNN.DROPOUT,
                )
                for _ in range(num_stages)
            ]
            if spfa.ENABLED
            else None
        )
        return ret

    @property
    def needs_support_maps(self) -> bool:
        return self.tfe is not None

    @property
    def needs_support_objects(self) -> bool:
        return self.spfa is not None

    def support_object_features(
        self, features: Dict[str, torch.Tensor], image_sizes: List[Tuple[int, int]]
    ) -> torch.Tensor:
        """
        The object features of support frames, each frame alone.

        Args:
            features: FPN maps by name, each (F, d, H_l, W_l), of F support frames.
            image_sizes: (height, width) of each frame.

        Returns:
            Tensor: (num_stages, F, N, d) the object features of every stage.
        """
        return torch.stack([o.object_features for o in self.iterate(features, image_sizes)])

    def _roi_levels(self, box_lists: List[Boxes]) -> torch.Tensor:
        pooler = self.pooler
        return assign_boxes_to_levels(
            box_lists,
            pooler.min_level,
            pooler.max_level,
            pooler.canonical_box_size,
            pooler.canonical_level,
        )

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        image_sizes: List[Tuple[int, int]],
        support_features: Optional[Dict[str, torch.Tensor]] = None,
        support_objects: Optional[torch.Tensor] = None,
    ) -> List[StageOutput]:
        """
        Args:
            features: FPN maps by name, each (B, d, H_l, W_l), of B target frames.
            image_sizes: (height, width) of each target frame.
            support_features: FPN maps by name, each (B, T, d, H'_l, W'_l): the T support
                frames of each target; needed with TFE.
            support_objects (Tensor): (num_stages, B, T, N', d) the supports' object features
                (:meth:`support_object_features`); needed with SPFA.

        Returns:
            list[StageOutput]: the targets' predictions, one per stage.
        """
        roi_hook = object_hook = None
        if self.tfe is not None:
            roi_hook = self._tfe_hook(support_features, len(image_sizes))
        if self.spfa is not None:
            object_hook = self._spfa_hook(support_objects, len(image_sizes))
        return self.iterate(features, image_sizes, roi_hook=roi_hook, object_hook=object_hook)

    def _tfe_hook(self, support_features, batch) -> RoIHook:
        if support_features is None:
            raise ValueError("TFE (MODEL.SPARSEVOD.TFE.ENABLED) needs support_features")
        support_maps = self._maps(support_features)
        num_support = {m.shape[1] for m in support_maps}
        if len(num_support) != 1 or any(m.shape[0] != batch for m in support_maps):
            raise ValueError(
                f"support maps {[tuple(m.shape) for m in support_maps]} must all be "
                f"(B={batch}, T, d, H, W) with one T"
            )

        def hook(i, rois, box_lists):
            roi_image = torch.cat(
                [torch.full((len(b),), j, device=rois.device) for j, b in enumerate(box_lists)]
            )
            return self.tfe[i](rois, support_maps, roi_image, self._roi_levels(box_lists))

        return hook

    def _spfa_hook(self, support_objects, batch) -> ObjectHook:
        if support_objects is None:
            raise ValueError("SPFA (MODEL.SPARSEVOD.SPFA.ENABLED) needs support_objects")
        if support_objects.dim() != 5 or support_objects.shape[:2] != (self.num_stages, batch):
            raise ValueError(
                f"support_objects {tuple(support_objects.shape)} must be "
                f"(num_stages={self.num_stages}, B={batch}, T, N, d)"
            )
        support_objects = support_objects.flatten(2, 3)

        def hook(i, objects):
            return self.spfa[i](objects, support_objects[i])

        return hook
