import pytest
import torch
from _sparse_testing import DIM, NUM_CLASSES, fpn_features, fpn_shape, instances, tiny_cfg
from detectron2.layers import ShapeSpec
from detectron2.utils.events import EventStorage

from vod_d2.modeling.sparse_rcnn import (
    DynamicInstanceInteraction,
    LearnableProposals,
    SetCriterion,
    SparseRCNNHead,
    sparse_rcnn_inference,
)

SIZES = [(64, 64), (48, 60)]


def _head(num_stages=3, num_proposals=6, seed=0):
    torch.manual_seed(seed)
    return SparseRCNNHead(tiny_cfg(num_stages, num_proposals), fpn_shape())


def test_proposals_start_as_the_whole_image():
    boxes, features = LearnableProposals(5, 8)(SIZES)
    assert boxes.shape == (2, 5, 4) and features.shape == (2, 5, 8)
    for i, (h, w) in enumerate(SIZES):
        for box in boxes[i]:
            assert box.tolist() == [0, 0, w, h]
    assert torch.equal(features[0], features[1])


def test_every_stage_predicts_for_every_proposal():
    head = _head()
    outputs = head(fpn_features(2), SIZES)
    assert len(outputs) == 3
    for output in outputs:
        assert output.logits.shape == (2, 6, NUM_CLASSES)
        assert output.boxes.shape == (2, 6, 4)
        assert output.object_features.shape == (2, 6, DIM)
        widths = output.boxes[..., 2:] - output.boxes[..., :2]
        assert (widths > 0).all() and torch.isfinite(output.boxes).all()


def test_class_logits_start_at_the_prior():
    head = _head()
    for stage in head.stages:
        torch.testing.assert_close(stage.class_logits.bias.sigmoid(), torch.full((3,), 0.01))


def _grad_norms(head, loss):
    params = [(name, p) for name, p in head.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True, retain_graph=True)
    return {name: 0.0 if g is None else g.abs().sum().item() for (name, _), g in zip(params, grads)}


def test_stage_outputs_depend_on_that_stage_and_the_earlier_ones_only():
    head = _head()
    features = fpn_features(2)
    outputs = head(features, SIZES)
    for i, output in enumerate(outputs):
        norms = _grad_norms(head, output.logits.sum() + output.boxes.sum())
        for j in range(head.num_stages):
            reached = sum(v for name, v in norms.items() if name.startswith(f"stages.{j}."))
            assert (reached > 0) == (j <= i), (i, j)
        # The proposal boxes are learned through stage 0's box loss only (boxes detached).
        assert norms["proposals.features"] > 0
        assert (norms["proposals.boxes"] > 0) == (i == 0), i
        # Each box is pooled from one level (stage 0's whole-image boxes all from p2).
        grads = torch.autograd.grad(output.logits.sum(), list(features.values()), retain_graph=True)
        assert sum(g.abs().sum() for g in grads) > 0, i


def test_boxes_are_detached_between_stages():
    # Stage 1 refines stage 0's boxes, but its boxes carry no gradient to stage 0's regressor.
    head = _head(num_stages=2)
    outputs = head(fpn_features(2), SIZES)
    norms = _grad_norms(head, outputs[1].boxes.sum())
    assert norms["stages.0.box_deltas.weight"] == 0
    assert norms["stages.1.box_deltas.weight"] > 0


def test_head_trains_with_the_set_loss():
    head = _head(num_stages=2)
    targets = [
        instances(SIZES[0], [[4, 4, 30, 40]], [1]),
        instances(SIZES[1], [[10, 5, 50, 40], [0, 0, 12, 12]], [0, 2]),
    ]
    with EventStorage():
        losses = SetCriterion()(head(fpn_features(2), SIZES), targets)
    assert len(losses) == 6 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_inference_takes_the_best_proposal_class_pairs():
    # Scores (sigmoid): proposal 0 (0.9, 0.2), proposal 1 (0.6, 0.95), proposal 2 (0.1, 0.7):
    # the top 3 pairs are (1, class 1), (0, class 0), (2, class 1).
    probs = torch.tensor([[[0.9, 0.2], [0.6, 0.95], [0.1, 0.7]]])
    boxes = torch.tensor([[[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]]], dtype=torch.float32)
    (result,) = sparse_rcnn_inference(torch.logit(probs), boxes, [(10, 12)], num_detections=3)
    assert result.image_size == (10, 12)
    torch.testing.assert_close(result.scores, torch.tensor([0.95, 0.9, 0.7]))
    assert result.pred_classes.tolist() == [1, 0, 1]
    assert result.pred_boxes.tensor.tolist() == [[1, 1, 2, 2], [0, 0, 1, 1], [2, 2, 3, 3]]
    (everything,) = sparse_rcnn_inference(torch.logit(probs), boxes, [(10, 12)], 100)
    assert len(everything) == 6


def test_bad_feature_maps_fail_clearly():
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match=r"IN_FEATURES \['p4'\] are not backbone outputs"):
        SparseRCNNHead(cfg, {k: v for k, v in fpn_shape().items() if k != "p4"})
    uneven = {**fpn_shape(), "p4": ShapeSpec(channels=8, stride=16)}
    with pytest.raises(ValueError, match="must share one width"):
        SparseRCNNHead(cfg, uneven)
    cfg.MODEL.SPARSE_RCNN.NUM_HEADS = 3
    with pytest.raises(ValueError, match="NUM_HEADS=3 must divide the FPN width"):
        SparseRCNNHead(cfg, fpn_shape())
    head = _head()
    with pytest.raises(KeyError, match=r"FPN maps \['p3'\]"):
        head({k: v for k, v in fpn_features(2).items() if k != "p3"}, SIZES)


def test_default_config_builds_the_paper_head():
    cfg = tiny_cfg()
    for key in ("NUM_PROPOSALS", "NUM_STAGES", "NUM_HEADS", "DIM_FEEDFORWARD", "DIM_DYNAMIC"):
        cfg.MODEL.SPARSE_RCNN[key] = type(cfg.MODEL.SPARSE_RCNN[key])(
            {
                "NUM_PROPOSALS": 100,
                "NUM_STAGES": 6,
                "NUM_HEADS": 8,
                "DIM_FEEDFORWARD": 2048,
                "DIM_DYNAMIC": 64,
            }[key]
        )
    head = SparseRCNNHead(cfg, fpn_shape(256))
    assert head.num_stages == 6 and head.proposals.num_proposals == 100
    stage = head.stages[0]
    assert stage.interaction.dynamic_params.out_features == 2 * 256 * 64
    assert stage.self_attention.num_heads == 8 and stage.ffn[0].out_features == 2048


def test_dynamic_interaction_filters_each_roi_with_its_own_proposal():
    # The convs' parameters come from each proposal feature: jointly permuting proposals and
    # RoIs permutes the outputs, and changing one proposal feature changes its output only.
    torch.manual_seed(0)
    interaction = DynamicInstanceInteraction(DIM, dynamic_dim=4, pooler_resolution=3)
    proposals, rois = torch.randn(4, DIM), torch.randn(4, DIM, 3, 3)
    out = interaction(proposals, rois)
    assert out.shape == (4, DIM)
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(interaction(proposals[order], rois[order]), out[order])
    changed = proposals.clone()
    changed[1] += 1.0
    moved = (interaction(changed, rois) - out).abs().sum(dim=1)
    assert moved[1] > 1e-3 and (moved[[0, 2, 3]] == 0).all()


def test_interaction_is_a_residual_on_the_proposal_features():
    # With the interaction's output layer at zero (its output relu(LN(0)) = 0), a stage's
    # object features are LayerNorm(proposal features).
    head = _head(num_stages=1)
    stage = head.stages[0]
    with torch.no_grad():
        stage.interaction.out.weight.zero_()
        stage.interaction.out.bias.zero_()
    proposals = torch.randn(2, 6, DIM)
    objects = stage.interact(proposals, torch.randn(12, DIM, 3, 3))
    torch.testing.assert_close(objects, stage.norm2(proposals))
