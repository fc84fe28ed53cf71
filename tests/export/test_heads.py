"""The fixed-shape heads give detectron2's proposals and detections, padded."""

import numpy as np
import torch
from _export_helpers import method_model
from detectron2.structures import ImageList
from torchvision.ops import batched_nms

from vod_d2.export.heads import keep_mask, padded_image, rank_kept, roi_detections, rpn_proposals
from vod_d2.export.tracing import traceable


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g), g


def test_keep_mask_is_batched_nms_of_the_valid_candidates():
    for seed in range(5):
        boxes, scores, g = _random_boxes(200, seed)
        groups = torch.randint(0, 3, (200,), generator=g)
        valid = torch.rand(200, generator=g) > 0.3
        # Invalid candidates may hold anything, e.g. the highest scores and far-away boxes.
        scores = torch.where(valid, scores, scores + 1)
        boxes = torch.where(valid[:, None], boxes, boxes * 100)
        kept = keep_mask(boxes, scores, groups, 0.5, valid)
        index = valid.nonzero()[:, 0]
        expected = index[batched_nms(boxes[index], scores[index], groups[index], 0.5)]
        assert set(kept.nonzero()[:, 0].tolist()) == set(expected.tolist()), seed


def test_rank_kept_orders_as_nms_and_pads():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.7, 0.9, 0.1])
    kept = torch.tensor([True, True, True, False, True, True])
    order, valid = rank_kept(scores, kept, 8)
    # Decreasing score, equal scores in index order (NMS's stable sort), then padding.
    assert order[:5].tolist() == [1, 4, 0, 2, 5]
    assert valid.tolist() == [True] * 5 + [False] * 3
    # Many equal scores (quantised ones, as R-FCN's on flat score maps): still NMS's order,
    # which an unstable sort of this size would not keep.
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (3000,), generator=g).float() / 4
    kept = torch.rand(3000, generator=g) > 0.2
    order, valid = rank_kept(scores, kept, 300)
    ranked = [int(i) for i in np.argsort(-scores.numpy(), kind="stable") if kept[i]]
    assert order.tolist() == ranked[:300] and valid.all()


def _features(model, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=g)
    x = padded_image(image, model.pixel_mean, model.pixel_std, model.backbone.size_divisibility)
    return x, model.backbone(x)


def test_rpn_proposals_are_detectron2s(synthetic_datasets):
    for name in ("rfcn", "single_frame_fpn"):  # one map; five FPN levels (NMS per level)
        _, model = method_model(name)
        with torch.no_grad(), traceable():
            for seed in range(3):
                x, features = _features(model, seed)
                (expected,), _ = model.proposal_generator(ImageList(x, [(64, 80)]), features)
                boxes, valid = rpn_proposals(model.proposal_generator, x, (64, 80), features)
                n = len(expected)
                assert valid[:n].all() and not valid[n:].any(), (name, seed)
                torch.testing.assert_close(boxes[:n], expected.proposal_boxes.tensor)
                assert (boxes[n:] == 0).all()


def test_roi_detections_ignore_padded_proposals(synthetic_datasets):
    for name in ("rfcn", "single_frame"):  # R-FCN and detectron2's StandardROIHeads
        _, model = method_model(name)
        with torch.no_grad(), traceable():
            x, features = _features(model, 0)
            (proposals,), _ = model.proposal_generator(ImageList(x, [(64, 80)]), features)
            proposals = proposals[:12]
            (expected,), _ = model.roi_heads(ImageList(x, [(64, 80)]), features, [proposals])
            # The real proposals and 8 of padding (zero boxes), which must detect nothing.
            boxes = torch.cat([proposals.proposal_boxes.tensor, torch.zeros(8, 4)])
            valid = torch.arange(len(boxes)) < len(proposals)
            got = roi_detections(model.roi_heads, features, (64, 80), boxes, valid)
        n = int(got.count)
        assert n == len(expected) > 0, name
        torch.testing.assert_close(got.boxes[:n], expected.pred_boxes.tensor)
        torch.testing.assert_close(got.scores[:n], expected.scores)
        assert torch.equal(got.classes[:n], expected.pred_classes)
        assert (got.classes[n:] == -1).all() and (got.scores[n:] == 0).all()
