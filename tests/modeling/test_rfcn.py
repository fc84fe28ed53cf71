import pytest
import torch
from _testing import brief_trainer, evaluate_on_synthetic, trained_losses
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from vod_d2 import add_vod_config
from vod_d2.modeling.roi_heads import RFCNOutputLayers, RFCNROIHeads, RFCNRPNHead

SYNTHETIC_CONFIG = "configs/synthetic/rfcn.yaml"
FEATURE = "res5_reduced"


def _cfg(path=SYNTHETIC_CONFIG, **overrides):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _predictor(num_classes=1, group_size=2, stride=2, channels=2, agnostic=True, **kwargs):
    return RFCNOutputLayers(
        ShapeSpec(channels=channels, stride=stride),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=num_classes,
        group_size=group_size,
        cls_agnostic_bbox_reg=agnostic,
        smooth_l1_beta=1.0,
        **kwargs,
    )


def _coordinate_features(size=12, num_images=2):
    """(N, 2, size, size) float64 maps: channel 0 is (n + 1) * column, channel 1 the row."""
    v, u = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.stack([torch.stack([(n + 1) * u, v]) for n in range(num_images)]).double()


def _expected_votes(conv, image, box, k, stride):
    """
    The voting by hand for maps linear in the coordinates: bilinear RoIAlign of a linear map
    averages it exactly, i.e. gives its value at the bin centre, and torchvision's RoIAlign
    reads pixel p at continuous coordinate p + 0.5. Map c = w_c0 (n + 1) u + w_c1 v + b_c and
    bin (i, j) of output g reads map c = g k^2 + i k + j; the score is the mean over bins.
    """
    x0, y0, x1, y1 = (t / stride for t in box)
    weight, bias = conv.weight[:, :, 0, 0], conv.bias
    votes = []
    for g in range(conv.out_channels // (k * k)):
        total = 0.0
        for i in range(k):
            for j in range(k):
                c = g * k * k + i * k + j
                u = x0 + (j + 0.5) * (x1 - x0) / k - 0.5
                v = y0 + (i + 0.5) * (y1 - y0) / k - 0.5
                total += weight[c, 0] * (image + 1) * u + weight[c, 1] * v + bias[c]
        votes.append(total / (k * k))
    return torch.stack(votes)


def test_position_sensitive_voting_on_linear_maps_by_hand():
    torch.manual_seed(0)
    k, stride = 2, 2
    predictor = _predictor(num_classes=2, group_size=k, stride=stride).double()
    with torch.no_grad():
        for conv in (predictor.cls_score, predictor.bbox_pred):
            conv.weight.normal_()
            conv.bias.normal_()
    # Inside the 12 x 12 map (coordinates in [0.5, 10.5]), so no sample is clamped at a border.
    boxes = [[[4.0, 4.0, 20.0, 20.0], [2.0, 6.0, 12.0, 8.0]], [[6.0, 4.0, 18.0, 22.0]]]
    scores, deltas = predictor(
        _coordinate_features(), [Boxes(torch.tensor(b).double()) for b in boxes]
    )
    assert scores.shape == (3, 3) and deltas.shape == (3, 4)
    rois = [(n, box) for n, image_boxes in enumerate(boxes) for box in image_boxes]
    for r, (image, box) in enumerate(rois):
        for out, conv in ((scores, predictor.cls_score), (deltas, predictor.bbox_pred)):
            expected = _expected_votes(conv, image, box, k, stride)
            assert torch.allclose(out[r], expected, atol=1e-9), (r, conv)


def test_position_sensitive_voting_one_case_by_hand():
    # One class (+ background), k = 2, stride 2, RoI (4, 4, 20, 20) = map cells (2, 2)-(10, 10):
    # bin centres at map coordinates 4 and 8, read as pixel values 3.5 and 7.5. The class's
    # only non-zero map is that of bin (0, 1) (top row, right column): u + 10 v, pooled at
    # u = 7.5, v = 3.5 into 42.5, voted with three zero bins: 42.5 / 4 = 10.625. (Bins ordered
    # column-major would read bin (1, 0) there: (3.5 + 75) / 4 = 19.625.)
    predictor = _predictor(num_classes=1, group_size=2, stride=2).double()
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.zero_()
        predictor.cls_score.weight[1, :, 0, 0] = torch.tensor([1.0, 10.0])
    scores, _ = predictor(
        _coordinate_features(num_images=1), [Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]]))]
    )
    assert torch.allclose(scores, torch.tensor([[10.625, 0.0]], dtype=torch.float64))


def _proposals(num_classes, sizes, seed=0):
    """Random RoIs with random labels; the last image has no ground truth (no gt_boxes)."""
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for n, size in enumerate(sizes):
        p = Instances((64, 64))
        xy = torch.rand(size, 2, generator=g) * 30
        p.proposal_boxes = Boxes(torch.cat([xy, xy + 5 + torch.rand(size, 2, generator=g) * 20], 1))
        if n < len(sizes) - 1:
            p.gt_classes = torch.randint(0, num_classes + 1, (size,), generator=g)
            p.gt_boxes = Boxes(p.proposal_boxes.tensor + torch.randn(size, 4, generator=g) * 3)
        else:
            p.gt_classes = torch.full((size,), num_classes)
        proposals.append(p)
    return proposals


@pytest.mark.parametrize("agnostic", [True, False])
def test_ohem_trains_on_the_hardest_rois_of_each_image(agnostic):
    num_classes, hard = 3, 3
    ohem = _predictor(num_classes, agnostic=agnostic, ohem_batch_size_per_image=hard)
    plain = _predictor(num_classes, agnostic=agnostic)
    sizes = [7, 2, 5]
    proposals = _proposals(num_classes, sizes)
    g = torch.Generator().manual_seed(1)
    total = sum(sizes)
    scores = torch.randn(total, num_classes + 1, generator=g) * 2
    deltas = torch.randn(total, 4 if agnostic else 4 * num_classes, generator=g)
    with EventStorage():
        # Each RoI's own loss: the plain losses of a batch of that RoI alone.
        single = []
        for n, p in enumerate(proposals):
            start = sum(sizes[:n])
            for r in range(len(p)):
                losses = plain.losses(
                    (scores[start + r : start + r + 1], deltas[start + r : start + r + 1]),
                    [p[[r]]],
                )
                single.append(sum(losses.values()))
        single = torch.stack(single).split(sizes)
        keep = ohem.hard_examples((scores, deltas), proposals)
        flat = []
        for n, (k, s) in enumerate(zip(keep, single)):
            expected = s.topk(min(hard, len(s))).indices
            assert sorted(k.tolist()) == sorted(expected.tolist()), n
            flat.append(expected + sum(sizes[:n]))
        flat = torch.cat(flat)
        hardest = [p[s.topk(min(hard, len(s))).indices] for p, s in zip(proposals, single)]
        expected = plain.losses((scores[flat], deltas[flat]), hardest)
        got = ohem.losses((scores, deltas), proposals)
        every_roi = plain.losses((scores, deltas), proposals)
    assert got.keys() == expected.keys()
    for name in got:
        assert torch.allclose(got[name], expected[name]), name
    # Without OHEM, every RoI counts: a different loss.
    assert not torch.allclose(sum(got.values()), sum(every_roi.values()))


def _same(a, b):
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("split", [True, False])
def test_rpn_reads_the_first_half_and_rfcn_the_last_half(split):
    cfg = _cfg(**{"MODEL.RFCN.SPLIT_FEATURES": split})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert isinstance(model.proposal_generator.rpn_head, RFCNRPNHead)
    assert isinstance(model.roi_heads, RFCNROIHeads)
    channels = cfg.MODEL.RFCN.REDUCTION_CHANNELS
    images = ImageList(torch.zeros(1, 3, 128, 160), [(128, 160)])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, channels, 8, 10, generator=g)

    def detect(features, proposals=None):
        with torch.no_grad():
            if proposals is None:
                proposals, _ = model.proposal_generator(images, {FEATURE: features})
            (instances,), _ = model.roi_heads(images, {FEATURE: features}, proposals)
        return proposals, instances

    proposals, instances = detect(x)
    assert len(instances) > 0
    for half in ("first", "last"):
        changed = x.clone()
        part = slice(0, channels // 2) if half == "first" else slice(channels // 2, None)
        changed[:, part] = torch.rand(changed[:, part].shape, generator=g)
        (new_proposals,), _ = detect(changed)
        _, new_instances = detect(changed, proposals)
        same_proposals = _same(
            new_proposals.proposal_boxes.tensor, proposals[0].proposal_boxes.tensor
        ) and _same(new_proposals.objectness_logits, proposals[0].objectness_logits)
        # On the same proposals, R-FCN's scores and boxes.
        same_detections = _same(new_instances.scores, instances.scores) and _same(
            new_instances.pred_boxes.tensor, instances.pred_boxes.tensor
        )
        assert same_proposals == (split and half == "last"), half
        assert same_detections == (split and half == "first"), half


def test_split_needs_an_even_width():
    cfg = _cfg(**{"MODEL.RFCN.REDUCTION_CHANNELS": 33})
    with pytest.raises(ValueError, match="MODEL.RFCN.SPLIT_FEATURES.*33"):
        build_model(cfg)
    cfg.MODEL.RFCN.SPLIT_FEATURES = False
    build_model(cfg)


def test_bad_head_settings_fail_clearly():
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.IN_FEATURES"):
        build_model(_cfg(**{"MODEL.ROI_HEADS.IN_FEATURES": ["res5_reduced", "res5"]}))
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        build_model(_cfg(**{"MODEL.MASK_ON": True}))
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE"):
        build_model(_cfg(**{"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "giou"}))
    with pytest.raises(ValueError, match="MODEL.RFCN.OHEM_BATCH_SIZE_PER_IMAGE.*0"):
        build_model(_cfg(**{"MODEL.RFCN.OHEM_BATCH_SIZE_PER_IMAGE": 0}))


# (config, channels the RPN reads, channels R-FCN reads, deformable pooling)
PAPER_CONFIGS = [
    ("configs/single_frame_R101_RFCN.yaml", 512, 512, False),
    ("configs/single_frame_R101_RFCN_deform.yaml", 512, 512, True),
    ("configs/stsn_R101_RFCN_deform.yaml", 512, 512, True),
    ("configs/stsn_plus_R101_RFCN_deform.yaml", 512, 512, True),
    ("configs/stmn_R101_RFCN.yaml", 1024, 1024, False),
]


@pytest.mark.parametrize("path,rpn_channels,rfcn_channels,deformable", PAPER_CONFIGS)
def test_paper_configs_build_the_papers_detector(path, rpn_channels, rfcn_channels, deformable):
    cfg = _cfg(path)
    model = build_model(cfg)
    rpn = model.proposal_generator
    assert rpn.rpn_head.objectness_logits.in_channels == rpn_channels
    # 9 anchors: sizes 128, 256, 512 (square roots of the areas) x 3 aspect ratios.
    (anchors,) = rpn.anchor_generator.cell_anchors
    sizes = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).sqrt()
    assert sorted({round(s.item()) for s in sizes}) == [128, 256, 512] and len(anchors) == 9
    assert rpn.post_nms_topk[False] == 300
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.in_channels == rfcn_channels
    assert (
        predictor.cls_score.out_channels == 31 * 49 and predictor.bbox_pred.out_channels == 4 * 49
    )
    assert (predictor.cls_offsets is not None) == deformable
    if deformable:
        # As the authors' code: offsets of their own for each class, one set for the box.
        assert predictor.cls_offsets.groups == 31 and predictor.bbox_offsets.groups == 1
    assert predictor.ohem_batch_size_per_image == 128
    if path.endswith("single_frame_R101_RFCN.yaml"):
        # LSTS Table 1: R-FCN R-101 has 60.0 M parameters (here 61.3 M in the feature network,
        # 42.4 M of them the ResNet and 18.9 M the feature reduction).
        assert 58e6 < sum(p.numel() for p in model.parameters()) < 64e6


@pytest.mark.usefixtures("synthetic_datasets")
def test_few_training_iterations_then_evaluation_on_cpu(tmp_path):
    cfg = _cfg(**{"MODEL.RPN.POST_NMS_TOPK_TEST": 20})
    trainer = brief_trainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert len(trained_losses(trainer)) == 2
    after = trainer.model.state_dict()
    for name in (
        "backbone.reduction.weight",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.weight",
    ):
        assert not torch.equal(before[name], after[name]), name
    results = evaluate_on_synthetic(cfg, trainer.model)
    assert 0.0 <= results["mAP"] <= 100.0
