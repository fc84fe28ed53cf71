import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import ps_roi_align

from vod_d2 import add_vod_config
from vod_d2.layers import deform_ps_roi_pool
from vod_d2.modeling.roi_heads import PSRoIOffsets, RFCNOutputLayers, position_sensitive_pool

SYNTHETIC_CONFIG = "configs/synthetic/rfcn.yaml"


def _predictor(deformable, num_classes=3, k=3, channels=6, stride=4, gamma=0.1):
    return RFCNOutputLayers(
        ShapeSpec(channels=channels, stride=stride),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=num_classes,
        group_size=k,
        cls_agnostic_bbox_reg=True,
        deformable=deformable,
        deformable_gamma=gamma,
    )


def _inputs(seed=0, num_images=2, channels=6, size=(10, 12), stride=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(num_images, channels, *size, generator=g)
    boxes = []
    for n in range(num_images):
        xy = torch.rand(4, 2, generator=g) * 20
        wh = 4 + torch.rand(4, 2, generator=g) * 24
        boxes.append(Boxes(torch.cat([xy, xy + wh], dim=1)))
    return x, boxes


def _rois(boxes):
    return torch.cat(
        [torch.cat([torch.full((len(b), 1), float(n)), b.tensor], 1) for n, b in enumerate(boxes)]
    )


def test_zero_offsets_give_the_plain_rfcn_head():
    torch.manual_seed(0)
    plain = _predictor(deformable=False)
    deformable = _predictor(deformable=True)
    missing, unexpected = deformable.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("_offsets." in name for name in missing) and missing
    for seed in range(3):
        x, boxes = _inputs(seed)
        for a, b in zip(plain(x, boxes), deformable(x, boxes)):
            assert torch.equal(a, b), seed


def test_zero_offsets_give_the_plain_detector():
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(SYNTHETIC_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    cfg.MODEL.RFCN.DEFORMABLE = True
    deformable = build_model(cfg).eval()
    deformable.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(1, cfg.MODEL.RFCN.REDUCTION_CHANNELS, 8, 10)
    images = ImageList(torch.zeros(1, 3, 128, 160), [(128, 160)])
    with torch.no_grad():
        proposals, _ = plain.proposal_generator(images, {"res5_reduced": x})
        (a,), _ = plain.roi_heads(images, {"res5_reduced": x}, proposals)
        (b,), _ = deformable.roi_heads(images, {"res5_reduced": x}, proposals)
    assert len(a) > 0
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_each_offset_group_pools_its_own_outputs():
    # Folding the groups into the batch must equal pooling each group's maps with its offsets.
    k, groups, per_group = 3, 4, 2
    for seed in range(3):
        x, boxes = _inputs(seed, channels=groups * per_group * k * k)
        rois = _rois(boxes)
        g = torch.Generator().manual_seed(seed + 10)
        offsets = torch.randn(len(rois), groups, 2, k, k, generator=g)
        out = position_sensitive_pool(x, rois, k, 0.25, 2, offsets=offsets, gamma=0.3)
        assert out.shape == (len(rois), groups * per_group, k, k)
        for group in range(groups):
            maps = x[:, group * per_group * k * k : (group + 1) * per_group * k * k]
            expected = deform_ps_roi_pool(maps, rois, offsets[:, group], k, 0.25, 2, trans_std=0.3)
            got = out[:, group * per_group : (group + 1) * per_group]
            assert torch.allclose(got, expected, atol=1e-6), (seed, group)


def test_offsets_of_each_group_and_bin_come_from_their_own_fields():
    k, groups = 2, 3
    branch = PSRoIOffsets(4, groups, output_size=k, spatial_scale=0.25)
    x, boxes = _inputs(channels=4)
    rois = _rois(boxes)
    assert torch.equal(branch(x, rois), torch.zeros(len(rois), groups, 2, k, k))
    # Field (g, d, i, j) is conv channel (2 g + d) k^2 + i k + j: a constant field there gives
    # that offset alone, for every RoI.
    for group, d, i, j in [(0, 0, 0, 0), (1, 0, 0, 1), (2, 1, 1, 0)]:
        with torch.no_grad():
            branch.conv.bias.zero_()
            branch.conv.bias[(2 * group + d) * k * k + i * k + j] = 0.7
        offsets = branch(x, rois)
        expected = torch.zeros_like(offsets)
        expected[:, group, d, i, j] = 0.7
        assert torch.allclose(offsets, expected), (group, d, i, j)


def test_gamma_scales_the_predicted_offsets():
    torch.manual_seed(0)
    x, boxes = _inputs()
    outputs = []
    for gamma, bias in ((0.1, 0.4), (0.2, 0.2)):
        predictor = _predictor(deformable=True, gamma=gamma)
        torch.manual_seed(1)
        with torch.no_grad():
            for conv in (predictor.cls_score, predictor.bbox_pred):
                conv.weight.normal_()
            predictor.cls_offsets.conv.bias.fill_(bias)
            predictor.bbox_offsets.conv.bias.fill_(-bias)
        outputs.append(predictor(x, boxes))
    plain = _predictor(deformable=False)
    plain.load_state_dict(predictor.state_dict(), strict=False)
    for a, b, c in zip(*outputs, plain(x, boxes)):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(a, c, atol=1e-3)


def test_the_offset_branch_learns_from_the_detection_loss():
    torch.manual_seed(0)
    predictor = _predictor(deformable=True)
    x, boxes = _inputs()
    proposals = []
    for n, b in enumerate(boxes):
        p = Instances((40, 48), proposal_boxes=b, gt_boxes=Boxes(b.tensor + 2.0))
        p.gt_classes = torch.tensor([0, 1, 2, 3]).roll(n)
        proposals.append(p)
    with EventStorage():
        losses = predictor.losses(predictor(x, boxes), proposals)
    sum(losses.values()).backward()
    for branch in (predictor.cls_offsets, predictor.bbox_offsets):
        assert branch.conv.weight.grad.abs().sum() > 0


def test_plain_pooling_is_torchvisions():
    x, boxes = _inputs(channels=2 * 9)
    rois = _rois(boxes)
    assert torch.equal(
        position_sensitive_pool(x, rois, 3, 0.25, 0), ps_roi_align(x, rois, 3, 0.25, 0)
    )
