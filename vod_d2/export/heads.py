"""
Detection heads with fixed-shape outputs, for an exported step.

detectron2's inference keeps a varying number of proposals and detections: it drops invalid or
empty boxes, suppresses with NMS and keeps the top ones, each step changing the tensors' sizes
and some of them branching on their values. An exported graph can do neither without unbacked
sizes, so these functions compute the same results on tensors of fixed size, every dropped
element masked out instead of removed:

* :func:`rpn_proposals`: ``find_top_rpn_proposals`` for one image, giving ``POST_NMS_TOPK_TEST``
  proposal boxes and a validity mask (the valid ones first, in detectron2's order);
* :func:`roi_detections`: the box head of ``StandardROIHeads`` or ``RFCNROIHeads`` on those
  proposals, then ``fast_rcnn_inference_single_image``;
* :func:`sparse_rcnn_detections`: Sparse R-CNN's top (proposal, class) pairs.

Every one of them returns :class:`Detections` padded to ``TEST.DETECTIONS_PER_IMAGE``: boxes,
scores and classes of the kept detections first, by decreasing score, then padding (boxes
and scores zero, class -1), and their count.

NMS is torchvision's op on all the candidates, the masked ones with a score of ``-inf`` (NMS
visits boxes by decreasing score, so they come after every kept one and suppress none of them),
and the class offsets of ``batched_nms``'s coordinate trick computed over the unmasked boxes
only, as detectron2 computes them over the boxes it kept. (On the CPU, torchvision suppresses
more than 1,000 candidates class by class instead of offsetting them; both keep the same boxes
but for IoUs within float rounding of the threshold.)
"""

from typing import NamedTuple, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

from .tracing import is_portable

__all__ = [
    "Detections",
    "padded_image",
    "clip_boxes",
    "keep_mask",
    "rank_kept",
    "rpn_proposals",
    "roi_detections",
    "sparse_rcnn_detections",
]


class Detections(NamedTuple):
    """
    A frame's detections, padded to a fixed number D.

    Attributes:
        boxes (Tensor): (D, 4) float32 (x0, y0, x1, y1) in the step's input pixels.
        scores (Tensor): (D,) float32, decreasing over the first ``count``, 0 after.
        classes (Tensor): (D,) int64 class indices, -1 after ``count``.
        count (Tensor): () int64, the number of detections.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    count: torch.Tensor


def keep_mask(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    iou_threshold: float,
    valid: torch.Tensor,
) -> torch.Tensor:
    """
    ``torchvision.ops.batched_nms`` of the valid candidates, as a mask over all of them.

    Args:
        boxes (Tensor): (N, 4) candidates.
        scores (Tensor): (N,) their scores.
        groups (Tensor): (N,) int64 group of each (NMS runs within groups).
        iou_threshold: NMS's threshold.
        valid (Tensor): (N,) bool, the candidates that take part.

    Returns:
        Tensor: (N,) bool, the valid candidates NMS keeps.
    """
    boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    # batched_nms's offsets: max over the boxes that take part, as detectron2 gives it only those.
    max_coordinate = boxes.max()
    offsets = groups.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    keep = nms(boxes + offsets[:, None], scores, iou_threshold)
    kept = torch.zeros_like(valid).index_fill(0, keep, True)
    return kept & valid


def clip_boxes(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """detectron2's ``Boxes.clip`` without its finiteness assertion (a data-dependent branch):
    (N, 4) boxes clamped into an image of ``image_size`` (H, W)."""
    height, width = image_size
    x0 = boxes[:, 0].clamp(min=0, max=width)
    y0 = boxes[:, 1].clamp(min=0, max=height)
    x1 = boxes[:, 2].clamp(min=0, max=width)
    y1 = boxes[:, 3].clamp(min=0, max=height)
    return torch.stack((x0, y0, x1, y1), dim=-1)


def rank_kept(scores: torch.Tensor, kept: torch.Tensor, size: int) -> Tuple[torch.Tensor, ...]:
    """
    The ``size`` best kept candidates, in NMS's order (decreasing score, ties in index order).

    Args:
        scores (Tensor): (N,) candidate scores.
        kept (Tensor): (N,) bool, the candidates kept.
        size: how many to return; fewer candidates are padded.

    Returns:
        (order (size,) int64 indices into the candidates, valid (size,) bool).
    """
    ranked = torch.where(kept, scores, torch.full_like(scores, float("-inf")))
    # Padded by ``size`` whatever N is, so that the result has ``size`` elements without a
    # branch on N (symbolic when the frame size is).
    ranked = torch.cat([ranked, ranked.new_full((size,), float("-inf"))])
    if is_portable():
        # ONNX's TopK ranks equal values by index, as a stable sort (which ONNX lacks) does.
        ordered, order = ranked.topk(size)
    else:
        # A stable sort, as NMS's own: equal scores keep the candidates' order.
        ordered, order = ranked.sort(descending=True, stable=True)
        order, ordered = order[:size], ordered[:size]
    valid = ordered > float("-inf")
    # Padding indices point at candidate 0, which always exists.
    order = torch.where(valid, order, torch.zeros_like(order))
    return order, valid


def rpn_proposals(
    rpn, images: torch.Tensor, image_size: Tuple[int, int], features: dict
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    detectron2's ``RPN`` at test time, for one image, with fixed-shape outputs.

    Args:
        rpn: a detectron2 ``RPN`` in eval mode.
        images (Tensor): (1, 3, H', W') the padded input (only its size is read).
        image_size: (H, W) of the image inside it (proposals are clipped to it).
        features: the maps the RPN reads, (1, C, h, w) each.

    Returns:
        (boxes (P, 4), valid (P,) bool), P = ``rpn.post_nms_topk[False]``: the proposals of
        ``find_top_rpn_proposals``, in its order, then padding.
    """
    del images
    maps = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(maps)
    logits, deltas = rpn.rpn_head(maps)
    logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
    box_dim = rpn.anchor_generator.box_dim
    deltas = [
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
        .permute(0, 3, 4, 1, 2)
        .flatten(1, -2)
        for x in deltas
    ]
    proposals = rpn._decode_proposals(anchors, deltas)
    pre_nms_topk = rpn.pre_nms_topk[False]
    post_nms_topk = rpn.post_nms_topk[False]
    scores, boxes, levels = [], [], []
    for level, (boxes_i, logits_i) in enumerate(zip(proposals, logits)):
        k = torch.sym_min(logits_i.shape[1], pre_nms_topk)
        top, index = logits_i[0].topk(k)
        scores.append(top)
        boxes.append(boxes_i[0][index])
        levels.append(torch.full_like(index, level))
    scores, boxes, levels = torch.cat(scores), torch.cat(boxes), torch.cat(levels)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes = clip_boxes(boxes, image_size)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = valid & (widths > rpn.min_box_size) & (heights > rpn.min_box_size)
    kept = keep_mask(boxes, scores, levels, rpn.nms_thresh, valid)
    order, valid = rank_kept(scores, kept, post_nms_topk)
    boxes = torch.where(valid[:, None], boxes[order], torch.zeros_like(boxes[order]))
    return boxes, valid


def _predict(roi_heads, features: dict, proposals: Instances):
    """(class scores, box deltas) of the box head for ``proposals``."""
    name = type(roi_heads).__name__
    if hasattr(roi_heads, "box_pooler"):  # StandardROIHeads
        maps = [features[f] for f in roi_heads.box_in_features]
        pooled = roi_heads.box_pooler(maps, [proposals.proposal_boxes])
        return roi_heads.box_predictor(roi_heads.box_head(pooled))
    if hasattr(roi_heads, "split_features"):  # RFCNROIHeads
        from vod_d2.modeling.roi_heads.rfcn import rfcn_features

        x = rfcn_features(features[roi_heads.in_feature], roi_heads.split_features)
        return roi_heads.box_predictor(x, [proposals.proposal_boxes])
    raise NotImplementedError(f"no fixed-shape inference for {name}")


def roi_detections(
    roi_heads,
    features: dict,
    image_size: Tuple[int, int],
    proposal_boxes: torch.Tensor,
    proposal_valid: torch.Tensor,
) -> Detections:
    """
    ``StandardROIHeads`` or ``RFCNROIHeads`` at test time, then
    ``fast_rcnn_inference_single_image``, on fixed-size proposals.

    Args:
        roi_heads: the model's ROI heads, in eval mode.
        features: the maps they read, (1, C, h, w) each.
        image_size: (H, W) of the image (boxes are clipped to it).
        proposal_boxes (Tensor): (P, 4) proposals.
        proposal_valid (Tensor): (P,) bool, the real ones.

    Returns:
        Detections: ``box_predictor.test_topk_per_image`` of them.
    """
    predictor = roi_heads.box_predictor
    proposals = Instances(image_size)
    proposals.proposal_boxes = Boxes(proposal_boxes)
    predictions = _predict(roi_heads, features, proposals)
    (boxes,) = predictor.predict_boxes(predictions, [proposals])
    (scores,) = predictor.predict_probs(predictions, [proposals])
    valid = proposal_valid & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    scores = scores[:, :-1]
    num_rois, num_classes = scores.shape
    boxes = (
        clip_boxes(boxes.reshape(-1, 4), image_size)
        .view(num_rois, -1, 4)
        .expand(-1, num_classes, -1)
        .reshape(-1, 4)
    )
    scores = scores.reshape(-1)
    classes = torch.arange(num_classes, device=scores.device).repeat(num_rois)
    candidates = (scores > predictor.test_score_thresh) & valid.repeat_interleave(num_classes)
    kept = keep_mask(boxes, scores, classes, predictor.test_nms_thresh, candidates)
    size = predictor.test_topk_per_image
    if size < 0:
        size = num_rois * num_classes
    order, valid = rank_kept(scores, kept, size)
    return _padded(boxes[order], scores[order], classes[order], valid)


def roi_num_detections(model) -> int:
    """
    D of :func:`roi_detections` for an R-CNN ``model``'s fixed-size proposals (the RPN's
    ``post_nms_topk`` at test): ``test_topk_per_image``, or every (proposal, class) pair.
    """
    predictor = model.roi_heads.box_predictor
    if predictor.test_topk_per_image >= 0:
        return predictor.test_topk_per_image
    return model.proposal_generator.post_nms_topk[False] * predictor.num_classes


def sparse_rcnn_detections(
    logits: torch.Tensor, boxes: torch.Tensor, image_size: Tuple[int, int], num_detections: int
) -> Detections:
    """
    :func:`vod_d2.modeling.sparse_rcnn.head.sparse_rcnn_inference` of one image, which is
    fixed-size already (the best ``min(D, N K)`` pairs), padded to ``num_detections``.

    Args:
        logits (Tensor): (1, N, K) class logits of the last stage.
        boxes (Tensor): (1, N, 4) its boxes.
        image_size: (H, W) of the image.
        num_detections: D.
    """
    from vod_d2.modeling.sparse_rcnn.head import sparse_rcnn_inference

    (result,) = sparse_rcnn_inference(logits, boxes, [image_size], num_detections)
    found = result.scores.shape[0]
    valid = torch.ones(found, dtype=torch.bool, device=logits.device)
    boxes, scores, classes = result.pred_boxes.tensor, result.scores, result.pred_classes
    missing = num_detections - found
    if missing > 0:
        boxes = torch.cat([boxes, boxes.new_zeros((missing, 4))])
        scores = torch.cat([scores, scores.new_zeros((missing,))])
        classes = torch.cat([classes, classes.new_zeros((missing,))])
        valid = torch.cat([valid, valid.new_zeros((missing,))])
    return _padded(boxes, scores, classes, valid)


def _padded(boxes, scores, classes, valid) -> Detections:
    """Zero boxes and scores and class -1 where not ``valid`` (which is a prefix)."""
    return Detections(
        torch.where(valid[:, None], boxes, torch.zeros_like(boxes)),
        torch.where(valid, scores, torch.zeros_like(scores)),
        torch.where(valid, classes, torch.full_like(classes, -1)),
        valid.sum(),
    )


def padded_image(
    image: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, divisibility: int
) -> torch.Tensor:
    """
    ``preprocess_image`` of one frame: normalised, then zero-padded on the right and bottom to
    a multiple of ``divisibility`` (detectron2's ``ImageList.from_tensors``).

    Args:
        image (Tensor): (3, H, W) uint8 (or float) pixels in ``INPUT.FORMAT`` order.
        pixel_mean, pixel_std (Tensor): (3, 1, 1).
        divisibility: the backbone's ``size_divisibility`` (0 or 1: no padding).

    Returns:
        Tensor: (1, 3, H', W') float32.
    """
    x = (image.to(pixel_mean.dtype) - pixel_mean) / pixel_std
    if divisibility > 1:
        height, width = x.shape[-2:]
        pad_h = (divisibility - height % divisibility) % divisibility
        pad_w = (divisibility - width % divisibility) % divisibility
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
    return x[None]
