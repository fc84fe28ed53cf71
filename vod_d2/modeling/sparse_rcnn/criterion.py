"""
Set-prediction loss of Sparse R-CNN (Sun et al., CVPR 2021, §3.5, after DETR): a one-to-one
Hungarian matching of predictions to ground truth, then focal, L1 and GIoU losses on it.
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils import comm
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss

__all__ = ["HungarianMatcher", "SetCriterion"]


class HungarianMatcher:
    """
    Assigns each ground-truth box of an image one prediction, minimising the sum of

    ``class_weight * C_cls + l1_weight * C_L1 + giou_weight * C_giou``

    over all one-to-one assignments (``scipy.optimize.linear_sum_assignment``). For prediction
    i and ground truth j of class c: ``C_cls`` is the focal loss of a positive minus that of a
    negative at logit ``x_ic`` (the change of the focal loss when i becomes j's match),
    ``C_L1`` the L1 distance of the boxes normalised by the image size (x0, y0, x1, y1 in
    [0, 1]) and ``C_giou`` minus their generalised IoU.
    """

    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        """
        Args:
            class_weight, l1_weight, giou_weight: weights of the three costs (paper: 2, 5, 2).
            focal_alpha, focal_gamma: the focal loss's alpha and gamma.
        """
        if not any((class_weight, l1_weight, giou_weight)):
            raise ValueError("the matching cost needs a non-zero weight")
        self.class_weight = class_weight
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrix(self, logits, boxes, gt_classes, gt_boxes):
        """
        Args:
            logits (Tensor): (N, K) class logits of N predictions.
            boxes (Tensor): (N, 4) predicted boxes, normalised (x0, y0, x1, y1).
            gt_classes (Tensor): (G,) int64 classes of the ground truth.
            gt_boxes (Tensor): (G, 4) ground-truth boxes, normalised (x0, y0, x1, y1).

        Returns:
            Tensor: (N, G) matching costs.
        """
        x = logits[:, gt_classes]
        p = x.sigmoid()
        alpha, gamma = self.focal_alpha, self.focal_gamma
        # -log(p) = softplus(-x) and -log(1 - p) = softplus(x), exact for any logit.
        positive = alpha * (1 - p) ** gamma * F.softplus(-x)
        negative = (1 - alpha) * p**gamma * F.softplus(x)
        return (
            self.class_weight * (positive - negative)
            + self.l1_weight * torch.cdist(boxes, gt_boxes, p=1)
            - self.giou_weight * generalized_box_iou(boxes, gt_boxes)
        )

    @torch.no_grad()
    def __call__(self, logits, boxes, gt_classes, gt_boxes) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Same arguments as :meth:`cost_matrix`.

        Returns:
            Tensor: (min(N, G),) int64 indices of the matched predictions, increasing.
            Tensor: (min(N, G),) int64 indices of their ground-truth boxes.
        """
        cost = self.cost_matrix(logits, boxes, gt_classes, gt_boxes)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        device = logits.device
        return torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)


class SetCriterion(nn.Module):
    """
    The set-prediction loss of Sparse R-CNN over the stages of its head:

    ``L = class_weight * L_cls + l1_weight * L_L1 + giou_weight * L_giou``

    for the Hungarian matching of each stage (``HungarianMatcher`` with the same weights),
    where ``L_cls`` is the sigmoid focal loss over all N x K (proposal, class) pairs (one-hot
    targets at the matched pairs), ``L_L1`` the L1 distance of the matched boxes normalised by
    the image size and ``L_giou`` their GIoU loss, each summed and divided by the number of
    ground-truth boxes (averaged over workers, at least 1). With deep supervision every stage
    gets this loss (§3.5, as DETR); else only the last.
    """

    @configurable
    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        deep_supervision: bool = True,
    ):
        """
        Args:
            class_weight, l1_weight, giou_weight: lambda_cls, lambda_L1, lambda_giou (paper:
                2, 5, 2), for the matching cost and the loss.
            focal_alpha, focal_gamma: the focal loss's alpha and gamma (0.25, 2).
            deep_supervision: a loss on every stage (paper) rather than the last only.
        """
        super().__init__()
        self.matcher = HungarianMatcher(
            class_weight=class_weight,
            l1_weight=l1_weight,
            giou_weight=giou_weight,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        )
        self.weights = {"cls": class_weight, "l1": l1_weight, "giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.deep_supervision = deep_supervision

    @classmethod
    def from_config(cls, cfg):
        sr = cfg.MODEL.SPARSE_RCNN
        return {
            "class_weight": sr.CLASS_WEIGHT,
            "l1_weight": sr.L1_WEIGHT,
            "giou_weight": sr.GIOU_WEIGHT,
            "focal_alpha": sr.FOCAL_ALPHA,
            "focal_gamma": sr.FOCAL_GAMMA,
            "deep_supervision": sr.DEEP_SUPERVISION,
        }

    def _num_boxes(self, targets, device) -> float:
        num = torch.tensor(float(sum(len(t) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num)
        return max(num.item() / comm.get_world_size(), 1.0)

    def stage_losses(self, logits, boxes, targets: List[Instances], num_boxes: float):
        """
        The three weighted losses of one stage.

        Args:
            logits (Tensor): (B, N, K) class logits.
            boxes (Tensor): (B, N, 4) boxes (x0, y0, x1, y1) in pixels of the network input.
            targets: per image, ``gt_boxes`` in the same pixels and ``gt_classes`` in [0, K);
                their ``image_size`` (h, w) normalises the boxes.
            num_boxes: the normaliser of the sums.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_l1`` and ``loss_giou``, scalars.
        """
        cls_targets = torch.zeros_like(logits)
        matched, matched_gt, scales = [], [], []
        for i, target in enumerate(targets):
            h, w = target.image_size
            scale = boxes.new_tensor([w, h, w, h])
            gt_boxes = target.gt_boxes.tensor.to(boxes.dtype)
            rows, cols = self.matcher(
                logits[i], boxes[i] / scale, target.gt_classes, gt_boxes / scale
            )
            cls_targets[i, rows, target.gt_classes[cols]] = 1
            matched.append(boxes[i, rows])
            matched_gt.append(gt_boxes[cols])
            scales.append(scale.expand(len(rows), 4))
        matched, matched_gt, scales = (torch.cat(x) for x in (matched, matched_gt, scales))
        loss_cls = sigmoid_focal_loss(
            logits, cls_targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        loss_l1 = F.l1_loss(matched / scales, matched_gt / scales, reduction="sum")
        loss_giou = generalized_box_iou_loss(matched, matched_gt, reduction="sum")
        return {
            "loss_cls": self.weights["cls"] * loss_cls / num_boxes,
            "loss_l1": self.weights["l1"] * loss_l1 / num_boxes,
            "loss_giou": self.weights["giou"] * loss_giou / num_boxes,
        }

    def forward(
        self, stage_outputs: Sequence[Tuple[torch.Tensor, ...]], targets: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            stage_outputs: per stage, at least (logits (B, N, K), boxes (B, N, 4)), e.g. the
                :class:`StageOutput` s of the head.
            targets: per image, the ground truth (``gt_boxes``, ``gt_classes``).

        Returns:
            dict[str, Tensor]: the weighted losses of the last stage (``loss_cls``,
            ``loss_l1``, ``loss_giou``) and, with deep supervision, of each earlier stage i
            (``loss_cls_stage{i}``, ...); their sum is the total loss.
        """
        if len(targets) != stage_outputs[-1][0].shape[0]:
            raise ValueError(
                f"{len(targets)} targets for {stage_outputs[-1][0].shape[0]} predicted images"
            )
        num_boxes = self._num_boxes(targets, stage_outputs[-1][0].device)
        last = len(stage_outputs) - 1
        losses = {}
        for i, output in enumerate(stage_outputs):
            if i < last and not self.deep_supervision:
                continue
            suffix = "" if i == last else f"_stage{i}"
            for name, value in self.stage_losses(output[0], output[1], targets, num_boxes).items():
                losses[name + suffix] = value
        return losses
