import math

import pytest
import torch
from _sparse_testing import instances

from vod_d2.modeling.sparse_rcnn import HungarianMatcher, SetCriterion

LN2 = math.log(2.0)


def _focal_cost(p, alpha=0.25, gamma=2.0):
    """Focal loss of a positive minus that of a negative at probability p."""
    return alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p**gamma * -math.log(1 - p)


def test_matching_cost_by_hand():
    # Normalised boxes: prediction 0 is ground truth 0 exactly, prediction 1 the whole image.
    #   (0, 0): L1 0, GIoU 1.
    #   (0, 1): L1 4 * 0.5 = 2; disjoint, hull [0, 1]^2 of area 1, union 0.5: GIoU -0.5.
    #   (1, j): L1 0.5 + 0.5 = 1; IoU 0.25 / 1, hull = union: GIoU 0.25 (both j by symmetry).
    # Logits 0 (p = 1/2) except prediction 1's class-1 logit ln 3 (p = 3/4).
    boxes = torch.tensor([[0, 0, 0.5, 0.5], [0, 0, 1, 1]], dtype=torch.float64)
    gt_boxes = torch.tensor([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], dtype=torch.float64)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    matcher = HungarianMatcher(class_weight=2, l1_weight=5, giou_weight=2)
    cost = matcher.cost_matrix(logits, boxes, torch.tensor([0, 1]), gt_boxes)
    half, three_quarters = _focal_cost(0.5), _focal_cost(0.75)
    assert half == pytest.approx(0.25 * 0.25 * LN2 - 0.75 * 0.25 * LN2)
    expected = torch.tensor(
        [
            [2 * half + 5 * 0 - 2 * 1.0, 2 * half + 5 * 2 - 2 * -0.5],
            [2 * half + 5 * 1 - 2 * 0.25, 2 * three_quarters + 5 * 1 - 2 * 0.25],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cost, expected)
    rows, cols = matcher(logits, boxes, torch.tensor([0, 1]), gt_boxes)
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1]


def test_hungarian_matching_finds_the_minimum_total_cost(monkeypatch):
    # 4 predictions x 3 ground truths. Greedy on the smallest entry takes (1, 1) = 0, then
    # (2, 2) = 2 and (0, 0) = 4: total 6. Enumerating by the prediction that takes column 1:
    # row 0 (cost 1) leaves min((1,0)+(2,2), (1,2)+(2,0)) = 4, total 5; row 1 (0) leaves 6;
    # row 2 (2) leaves 5, total 7; row 3 (9) more. The unique optimum is 0->1, 1->0, 2->2.
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0], [9.0, 9.0, 9.0]])
    matcher = HungarianMatcher()
    monkeypatch.setattr(matcher, "cost_matrix", lambda *args: cost)
    rows, cols = matcher(torch.zeros(4, 2), torch.zeros(4, 4), torch.zeros(3), torch.zeros(3, 4))
    assert rows.dtype == cols.dtype == torch.int64
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0, 2: 2}


def _perfect_predictions(targets, num_proposals, num_classes, confidence, seed=0):
    """
    Per image, the ground truth placed at random proposals with logit +confidence at its class
    and -confidence elsewhere; the other proposals get random boxes and -confidence logits.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((len(targets), num_proposals, num_classes), -confidence)
    logits = logits.double()
    boxes = torch.rand(len(targets), num_proposals, 4, generator=g, dtype=torch.float64) * 20
    boxes[..., 2:] += boxes[..., :2] + 5
    for i, t in enumerate(targets):
        slots = torch.randperm(num_proposals, generator=g)[: len(t)]
        boxes[i, slots] = t.gt_boxes.tensor.double()
        logits[i, slots, t.gt_classes] = confidence
    return logits, boxes


def _targets():
    return [
        instances((40, 50), [[2, 3, 20, 30], [25, 5, 45, 35]], [2, 0]),
        instances((40, 50), [[1, 1, 10, 12], [5, 20, 30, 38], [30, 2, 48, 16]], [1, 1, 3]),
    ]


def test_loss_vanishes_when_predictions_equal_the_targets():
    # The matched boxes equal the ground truth: L1 is exactly 0 and GIoU 0 up to torchvision's
    # eps (1e-7 / box area). The focal loss is 0 only in the limit of confident predictions
    # (-alpha (1 - p)^2 log p at positives, -(1 - alpha) p^2 log(1 - p) at negatives), so the
    # total must decrease to 0 as the logits go to +-infinity.
    targets = _targets()
    criterion = SetCriterion()
    totals = []
    for confidence in (0.0, 2.0, 5.0, 10.0, 40.0):
        logits, boxes = _perfect_predictions(
            targets, num_proposals=7, num_classes=4, confidence=confidence
        )
        losses = criterion([(logits, boxes), (logits, boxes)], targets)
        assert set(losses) == {
            "loss_cls",
            "loss_l1",
            "loss_giou",
            "loss_cls_stage0",
            "loss_l1_stage0",
            "loss_giou_stage0",
        }
        assert losses["loss_l1"] == 0 and losses["loss_l1_stage0"] == 0
        assert 0 <= losses["loss_giou"] < 1e-8
        totals.append(sum(losses.values()).item())
    assert all(a > b for a, b in zip(totals, totals[1:])), totals
    assert totals[0] > 1 and totals[-1] < 1e-8


def test_loss_counts_wrong_boxes_and_wrong_classes():
    targets = _targets()
    logits, boxes = _perfect_predictions(targets, 7, 4, confidence=40.0)
    criterion = SetCriterion(deep_supervision=False)
    shifted = criterion([(logits, boxes + 1.0)], targets)
    # Every coordinate off by one pixel: L1 = 5 * sum |1 / w or 1 / h| / number of boxes.
    assert shifted["loss_l1"].item() == pytest.approx(5 * 2 * (1 / 50 + 1 / 40))
    assert shifted["loss_giou"] > 0.01
    swapped = criterion([(logits.flip(2), boxes)], targets)
    assert swapped["loss_cls"] > 1


def test_loss_is_normalised_by_the_number_of_boxes():
    # The same image twice in the batch: sums and box count both double.
    targets = _targets()
    logits, boxes = _perfect_predictions(targets, 7, 4, confidence=1.0)
    criterion = SetCriterion()
    once = criterion([(logits[:1], boxes[:1])], targets[:1])
    twice = criterion([(logits[:1].repeat(2, 1, 1), boxes[:1].repeat(2, 1, 1))], targets[:1] * 2)
    for name in once:
        torch.testing.assert_close(once[name], twice[name])


def test_loss_of_an_image_without_objects_is_the_background_focal_loss():
    empty = instances((40, 50), [], [])
    logits = torch.zeros(1, 5, 4, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64).repeat(1, 5, 1)
    losses = SetCriterion(deep_supervision=False)([(logits, boxes)], [empty])
    assert losses["loss_l1"] == 0 and losses["loss_giou"] == 0
    # 20 negatives at p = 1/2, divided by max(0 boxes, 1): 2 * 20 * 0.75 * 0.25 * ln 2.
    assert losses["loss_cls"].item() == pytest.approx(2 * 20 * 0.75 * 0.25 * LN2)
    sum(losses.values()).backward()
    assert (logits.grad > 0).all()


def test_deep_supervision_matches_every_stage_on_its_own():
    targets = _targets()
    good = _perfect_predictions(targets, 7, 4, confidence=10.0, seed=1)
    bad = _perfect_predictions(targets, 7, 4, confidence=10.0, seed=2)
    bad = (bad[0], bad[1] + 3.0)
    losses = SetCriterion()([bad, good], targets)
    assert losses["loss_l1"] == 0 and losses["loss_l1_stage0"] > 0
    assert set(SetCriterion(deep_supervision=False)([bad, good], targets)) == {
        "loss_cls",
        "loss_l1",
        "loss_giou",
    }


def test_mismatched_batch_fails_clearly():
    with pytest.raises(ValueError, match="2 targets for 1 predicted images"):
        SetCriterion()([(torch.zeros(1, 3, 2), torch.zeros(1, 3, 4))], _targets())
