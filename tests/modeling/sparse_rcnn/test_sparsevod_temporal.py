import pytest
import torch
from _sparse_testing import DIM, LEVELS, fpn_features, fpn_shape, tiny_cfg
from torchvision.ops import roi_align

from vod_d2.layers import temporal_roi_align
from vod_d2.modeling.sparse_rcnn import (
    SemanticProposalAggregation,
    SparseRCNNHead,
    TemporalDynamicHead,
    TemporalFeatureExtraction,
)

SIZES = [(64, 64), (48, 60)]


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p[0].numel(), 1) ** 0.5)
    return module


def _block_map(blocks=6, block=2, dim=DIM, seed=0):
    """(1, dim, blocks * block, ...) map, constant on block x block squares of random vectors."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(1, dim, blocks, blocks, generator=g)
    return vectors.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3), vectors


@pytest.mark.parametrize("aggregation", ["MSA", "AVG"])
@pytest.mark.parametrize("k", [1, 4])
def test_tfe_of_identical_frames_is_the_target_roi_feature(aggregation, k):
    # Every 2 x 2 square of the map holds one random vector, and each 6 x 6 box covers 3 x 3
    # squares on their grid: its 3 x 3 RoIAlign cells (2 x 2 samples each) are exactly those
    # squares' vectors. On a support map equal to the target map, the K <= 4 most similar
    # locations of a cell are its own square (cosine 1, the softmax over identical
    # similarities is uniform): every temporal RoI feature is the target's, and TFE's
    # convex combination of T + 1 copies returns it, whatever its attention weights.
    target, vectors = _block_map()
    boxes = torch.tensor([[0, 0, 0, 6, 6], [0, 4, 2, 10, 8], [0, 6, 6, 12, 12]], dtype=torch.float)
    rois = roi_align(
        target, boxes, output_size=3, spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    torch.testing.assert_close(rois[1], vectors[0, :, 1:4, 2:5])
    num_support = 3
    support = [target[:, None].expand(1, num_support, -1, -1, -1)]
    tfe = _randomize(TemporalFeatureExtraction(DIM, k=k, num_heads=2, aggregation=aggregation))
    out = tfe(rois, support, torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    torch.testing.assert_close(out, rois)


def test_tfe_takes_each_roi_to_the_support_maps_of_its_level():
    # Spatially constant support maps: level 0 holds vector a everywhere, level 1 vector b, so
    # Temporal RoI Align returns a (or b) for any cell, and TFE's mean is (P + T v) / (T + 1).
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(DIM, generator=g), torch.randn(DIM, generator=g)
    num_support = 2
    maps = [
        v[None, None, :, None, None].expand(1, num_support, DIM, size, size).contiguous()
        for v, size in ((a, 8), (b, 4))
    ]
    rois = torch.randn(4, DIM, 3, 3, generator=g)
    levels = torch.tensor([1, 0, 0, 1])
    tfe = TemporalFeatureExtraction(DIM, k=2, aggregation="AVG")
    out = tfe(rois, maps, torch.zeros(4, dtype=torch.int64), levels)
    for i, level in enumerate(levels.tolist()):
        v = (a, b)[level][:, None, None]
        torch.testing.assert_close(out[i], (rois[i] + num_support * v) / (num_support + 1))


def test_tfe_msa_weights_are_a_softmax_over_frames_of_embedding_products():
    # A 1-head TFE whose embedding is the identity: the weight of frame j at cell m is
    # softmax_j(<X_0(m), X_j(m)> / sqrt(d)), X_0 the target's RoI feature.
    g = torch.Generator().manual_seed(0)
    rois = torch.randn(3, DIM, 3, 3, generator=g)
    maps = [torch.randn(1, 2, DIM, 7, 6, generator=g)]
    roi_image = torch.zeros(3, dtype=torch.int64)
    tfe = TemporalFeatureExtraction(DIM, k=3, num_heads=1)
    with torch.no_grad():
        tfe.embed.weight.zero_()
        tfe.embed.weight[:, :, 1, 1] = torch.eye(DIM)
        tfe.embed.bias.zero_()
    out = tfe(rois, maps, roi_image, torch.zeros(3, dtype=torch.int64))
    frames = torch.cat([rois[:, None], temporal_roi_align(rois, maps[0], roi_image, 3)], 1)
    weights = ((frames[:, :1] * frames).sum(2) / DIM**0.5).softmax(dim=1)
    torch.testing.assert_close(out, (weights[:, :, None] * frames).sum(1))


@pytest.mark.parametrize("aggregation", ["MSA", "AVG"])
def test_tfe_with_identity_init_starts_as_the_target_roi_features(aggregation):
    # The residual gate starts closed: whatever the supports, TFE gives RoIAlign's P_t back, and
    # once open the paper's combination.
    g = torch.Generator().manual_seed(0)
    rois = torch.randn(3, DIM, 3, 3, generator=g)
    support = [torch.randn(1, 2, DIM, 8, 8, generator=g)]
    where = torch.zeros(3, dtype=torch.int64)
    tfe = TemporalFeatureExtraction(DIM, k=2, num_heads=2, aggregation=aggregation).eval()
    gated = TemporalFeatureExtraction(
        DIM, k=2, num_heads=2, aggregation=aggregation, identity_init=True
    ).eval()
    gated.load_state_dict(tfe.state_dict(), strict=False)
    assert torch.equal(gated(rois, support, where, where), rois)
    assert not torch.allclose(tfe(rois, support, where, where), rois)
    gated.residual_gate.fix_opening(1.0)
    torch.testing.assert_close(gated(rois, support, where, where), tfe(rois, support, where, where))


@pytest.mark.parametrize("aggregation", ["MSA", "AVG"])
def test_spfa_starts_as_the_identity(aggregation):
    g = torch.Generator().manual_seed(0)
    objects, support = torch.randn(2, 5, DIM, generator=g), torch.randn(2, 12, DIM, generator=g)
    spfa = SemanticProposalAggregation(DIM, num_heads=2, aggregation=aggregation)
    torch.testing.assert_close(spfa(objects, support), objects)


def test_spfa_msa_is_equation_1():
    # W_t = softmax(theta(P_t) phi(P_s)^T / sqrt(d)) sigma(P_s) for one head, then the output
    # projection; SPFA returns P_t + W_t.
    g = torch.Generator().manual_seed(0)
    objects, support = torch.randn(2, 5, DIM, generator=g), torch.randn(2, 12, DIM, generator=g)
    spfa = _randomize(SemanticProposalAggregation(DIM, num_heads=1))
    attention = spfa.attention
    wq, wk, wv = attention.in_proj_weight.chunk(3)
    bq, bk, bv = attention.in_proj_bias.chunk(3)
    theta, phi, sigma = objects @ wq.T + bq, support @ wk.T + bk, support @ wv.T + bv
    weights = (theta @ phi.transpose(1, 2) / DIM**0.5).softmax(dim=2)
    expected = objects + attention.out_proj(weights @ sigma)
    torch.testing.assert_close(spfa(objects, support), expected)


@pytest.mark.parametrize("aggregation", ["MSA", "AVG"])
def test_spfa_of_identical_support_proposals_is_their_value(aggregation):
    # Attention weights sum to one over the support proposals: copies of one feature s give
    # out_proj(sigma(s)) to every target proposal, as the mean does.
    g = torch.Generator().manual_seed(0)
    objects, s = torch.randn(2, 5, DIM, generator=g), torch.randn(DIM, generator=g)
    spfa = _randomize(SemanticProposalAggregation(DIM, num_heads=2, aggregation=aggregation))
    value = (
        spfa.attention.out_proj(
            s @ spfa.attention.in_proj_weight.chunk(3)[2].T
            + spfa.attention.in_proj_bias.chunk(3)[2]
        )
        if aggregation == "MSA"
        else spfa.value(s)
    )
    out = spfa(objects, s.expand(2, 9, DIM))
    torch.testing.assert_close(out, objects + value)


def _temporal_head(tfe=True, spfa=True, num_stages=2, seed=0, **keys):
    cfg = tiny_cfg(num_stages)
    cfg.MODEL.SPARSEVOD.TFE.ENABLED = tfe
    cfg.MODEL.SPARSEVOD.SPFA.ENABLED = spfa
    for key, value in keys.items():
        module, name = key.split("_", 1)
        cfg.MODEL.SPARSEVOD[module][name] = value
    torch.manual_seed(seed)
    return TemporalDynamicHead(cfg, fpn_shape())


def _supports(head, num_support, batch=2, seed=5):
    """Random support frames: their maps (B, T, ...) and object features (stages, B, T, N, d)."""
    frames = fpn_features(batch * num_support, seed=seed)
    objects = head.support_object_features(frames, SIZES * num_support)
    maps = {k: v.unflatten(0, (num_support, batch)).transpose(0, 1) for k, v in frames.items()}
    return maps, objects.unflatten(1, (num_support, batch)).transpose(1, 2)


def test_temporal_head_without_tfe_and_spfa_is_sparse_rcnn():
    single = SparseRCNNHead(tiny_cfg(2), fpn_shape())
    temporal = _temporal_head(tfe=False, spfa=False)
    temporal.load_state_dict(single.state_dict())
    features = fpn_features(2)
    for a, b in zip(single(features, SIZES), temporal(features, SIZES)):
        torch.testing.assert_close(a.logits, b.logits)
        torch.testing.assert_close(a.boxes, b.boxes)


def test_sparsevod_with_spfa_starts_as_its_single_frame_detector():
    single = _randomize(SparseRCNNHead(tiny_cfg(2), fpn_shape()))
    temporal = _temporal_head(tfe=False)
    missing, unexpected = temporal.load_state_dict(single.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("spfa.") for k in missing)
    features = fpn_features(2)
    _, objects = _supports(temporal, 3)
    for a, b in zip(single(features, SIZES), temporal(features, SIZES, support_objects=objects)):
        torch.testing.assert_close(a.logits, b.logits)
        torch.testing.assert_close(a.boxes, b.boxes)


@pytest.mark.parametrize("num_support", [1, 3])
def test_temporal_head_shapes_and_gradients_of_every_stage(num_support):
    head = _temporal_head(num_stages=3)
    _randomize(head.spfa)  # away from SPFA's zero start, so gradients reach all of it
    features = fpn_features(2)
    maps, objects = _supports(head, num_support)
    objects = objects.detach().requires_grad_()
    outputs = head(features, SIZES, maps, objects)
    assert len(outputs) == 3
    for i, output in enumerate(outputs):
        assert output.logits.shape == (2, 6, 3) and output.boxes.shape == (2, 6, 4)
        loss = output.logits.sum() + output.boxes.sum()
        for name in ("tfe", "spfa"):
            for j, module in enumerate(getattr(head, name)):
                grads = torch.autograd.grad(
                    loss, list(module.parameters()), retain_graph=True, allow_unused=True
                )
                reached = sum(0 if g is None else g.abs().sum() for g in grads)
                assert (reached > 0) == (j <= i), (name, i, j)
        # SPFA of stage j reads the support frames' object features of stage j.
        (grad,) = torch.autograd.grad(loss, objects, retain_graph=True)
        for j in range(head.num_stages):
            assert (grad[j].abs().sum() > 0) == (j <= i), ("support objects", i, j)
        # TFE reads the support maps of the levels the stage pools from.
        grads = torch.autograd.grad(loss, list(maps.values()), retain_graph=True, allow_unused=True)
        assert sum(0 if g is None else g.abs().sum() for g in grads) > 0, i


def test_support_object_features_are_each_stage_object_features():
    head = _temporal_head()
    frames = fpn_features(3, seed=3)
    objects = head.support_object_features(frames, SIZES + SIZES[:1])
    assert objects.shape == (2, 3, 6, DIM)
    for i, output in enumerate(head.iterate(frames, SIZES + SIZES[:1])):
        torch.testing.assert_close(objects[i], output.object_features)


def test_temporal_head_ignores_the_order_of_the_support_frames():
    head = _temporal_head()
    _randomize(head.spfa)
    features = fpn_features(2)
    maps, objects = _supports(head, 3)
    order = torch.tensor([2, 0, 1])
    permuted = {k: v[:, order] for k, v in maps.items()}
    a = head(features, SIZES, maps, objects)[-1]
    b = head(features, SIZES, permuted, objects[:, :, order])[-1]
    torch.testing.assert_close(a.logits, b.logits)
    # Boxes of tens of pixels, summed in another order: float32 rounding of ~1e-4 px.
    torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
    c = head(features, SIZES, {k: v[:, [0, 0, 0]] for k, v in maps.items()}, objects)[-1]
    assert not torch.allclose(a.logits, c.logits)


def test_switches_build_the_ablations():
    assert _temporal_head(tfe=False).tfe is None and _temporal_head(spfa=False).spfa is None
    head = _temporal_head(TFE_AGGREGATION="AVG", SPFA_AGGREGATION="AVG", num_stages=3)
    assert len(head.tfe) == len(head.spfa) == 3
    assert not hasattr(head.tfe[0], "embed") and hasattr(head.spfa[0], "value")
    assert head.tfe[0].k == 2
    with pytest.raises(ValueError, match="MODEL.SPARSEVOD.TFE.AGGREGATION='SUM'"):
        _temporal_head(TFE_AGGREGATION="SUM")
    with pytest.raises(ValueError, match="MODEL.SPARSEVOD.SPFA.NUM_HEADS=3 must divide"):
        _temporal_head(SPFA_NUM_HEADS=3)
    with pytest.raises(ValueError, match=r"MODEL.SPARSEVOD.TFE.TOP_K must be an int in \[1, 32\]"):
        _temporal_head(TFE_TOP_K=33)


def test_missing_or_misshapen_supports_fail_clearly():
    head = _temporal_head()
    features = fpn_features(2)
    maps, objects = _supports(head, 2)
    with pytest.raises(ValueError, match="TFE .* needs support_features"):
        head(features, SIZES, support_objects=objects)
    with pytest.raises(ValueError, match="SPFA .* needs support_objects"):
        head(features, SIZES, maps)
    with pytest.raises(ValueError, match=r"must all be \(B=2, T, d, H, W\)"):
        head(features, SIZES, {k: v[:1] for k, v in maps.items()}, objects)
    with pytest.raises(ValueError, match=r"must be \(num_stages=2, B=2, T, N, d\)"):
        head(features, SIZES, maps, objects[:1])
    assert set(maps) == set(LEVELS)


@pytest.mark.parametrize("tfe, spfa", [(True, False), (False, True)])
def test_each_target_reads_its_own_support_frames(tfe, spfa):
    head = _temporal_head(tfe=tfe, spfa=spfa)
    if spfa:
        _randomize(head.spfa)
    features = fpn_features(2)
    maps, objects = _supports(head, 2)
    other_maps, other_objects = _supports(head, 2, seed=9)
    # Target 1 gets other support frames; target 0 keeps its own.
    mixed_maps = {k: torch.stack([v[0], other_maps[k][1]]) for k, v in maps.items()}
    mixed_objects = torch.stack([objects[:, 0], other_objects[:, 1]], dim=1)
    a = head(features, SIZES, maps, objects)[-1]
    b = head(features, SIZES, mixed_maps, mixed_objects)[-1]
    torch.testing.assert_close(a.logits[0], b.logits[0])
    assert not torch.allclose(a.logits[1], b.logits[1])
