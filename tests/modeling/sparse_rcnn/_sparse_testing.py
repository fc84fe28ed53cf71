"""
Tiny Sparse R-CNN heads and inputs shared by the tests of vod_d2.modeling.sparse_rcnn
(importable as ``_sparse_testing``: pytest puts this folder on the path).
"""

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances

from vod_d2 import add_vod_config

DIM = 16
LEVELS = ("p2", "p3", "p4")
NUM_CLASSES = 3


def tiny_cfg(num_stages=2, num_proposals=6):
    """
    The Sparse R-CNN keys at tiny widths: d = 16 over three FPN levels, K = 3 classes; TFE
    without its residual gate (the paper's module, which these tests check).
    """
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.VIDEO.IDENTITY_INIT = False
    cfg.MODEL.ROI_HEADS.IN_FEATURES = list(LEVELS)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 3
    sr = cfg.MODEL.SPARSE_RCNN
    sr.NUM_PROPOSALS = num_proposals
    sr.NUM_STAGES = num_stages
    sr.NUM_HEADS = 4
    sr.DIM_FEEDFORWARD = 32
    sr.DIM_DYNAMIC = 4
    cfg.MODEL.SPARSEVOD.TFE.NUM_HEADS = 2
    cfg.MODEL.SPARSEVOD.SPFA.NUM_HEADS = 2
    return cfg


def fpn_shape(dim=DIM):
    return {name: ShapeSpec(channels=dim, stride=2 ** (i + 2)) for i, name in enumerate(LEVELS)}


def fpn_features(batch, size=(64, 64), dim=DIM, seed=0, dtype=torch.float32):
    """Random FPN maps by name, (batch, dim, H / stride, W / stride)."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(batch, dim, size[0] // s.stride, size[1] // s.stride, generator=g)
        .to(dtype)
        .requires_grad_()
        for name, s in fpn_shape(dim).items()
    }


def instances(image_size, boxes, classes):
    """Ground truth of one image: ``gt_boxes`` (x0, y0, x1, y1) and ``gt_classes``."""
    result = Instances(image_size)
    result.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4))
    result.gt_classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
    return result
