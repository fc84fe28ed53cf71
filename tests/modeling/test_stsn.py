import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from _testing import brief_trainer, evaluate_on_synthetic, random_video, trained_losses
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from vod_d2 import add_vod_config
from vod_d2.engine import run_on_video
from vod_d2.modeling.temporal import build_temporal_aggregation
from vod_d2.modeling.temporal.stsn import (
    AggregationEmbedding,
    SpatioTemporalSamplingBlock,
    SSNAggregation,
    STSNAggregation,
)

STSN_CONFIG = "configs/synthetic/stsn.yaml"
SSN_CONFIG = "configs/synthetic/ssn.yaml"
PAPER_CONFIGS = [
    "configs/stsn_R50_DC5.yaml",
    "configs/stsn_R101_DC5.yaml",
    "configs/stsn_plus_R101_DC5.yaml",
    "configs/ssn_R50_DC5.yaml",
]


def _call(module, ref, support, offsets):
    """A temporal module's forward on plain (B, C, H, W) and (B, S, C, H, W) feature maps."""
    return module({"feature": ref}, {"feature": support}, offsets, [])


def _stsn(channels=6, conv_dim=5, out_channels=0, groups=1, num_convs=4, seed=0, pairs=0):
    torch.manual_seed(seed)
    sampling = SpatioTemporalSamplingBlock(
        channels,
        conv_dim=conv_dim,
        out_channels=out_channels,
        num_convs=num_convs,
        deformable_groups=groups,
    )
    embedding = AggregationEmbedding(sampling.out_channels, (4, 4, 7))
    shape = ShapeSpec(channels=channels, stride=16)
    return STSNAggregation(
        sampling=sampling, embedding=embedding, input_shape=shape, pairs_per_pass=pairs
    )


def _randomize(module, seed=1, offset_scale=0.5):
    """Parameters away from the identity initialisation, offsets at fractional positions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = offset_scale if ".offset." in name else 1.0 / math.sqrt(max(p[0].numel(), 1))
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def _features(batch, num_support, channels=6, size=(5, 7), seed=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(batch, channels, *size, generator=g, dtype=dtype)
    support = torch.randn(batch, num_support, channels, *size, generator=g, dtype=dtype)
    offsets = torch.arange(1, num_support + 1).repeat(batch, 1)
    return ref, support, offsets


# ---------------------------------------------------------------- sampling block (§4)


def check_sampling_block_shapes(device):
    cases = itertools.product([1, 2, 4], [(6, 0), (6, 10), (4, 3)], [1, 2], [(5, 7), (1, 1)])
    for num_convs, (channels, out), groups, size in cases:
        if channels % groups:
            continue
        block = SpatioTemporalSamplingBlock(
            channels, conv_dim=8, out_channels=out, num_convs=num_convs, deformable_groups=groups
        ).to(device)
        ref, support, _ = _features(3, 1, channels, size)
        sampled, offsets = block(ref.to(device), support[:, 0].to(device), return_offsets=True)
        case = (num_convs, channels, out, groups, size)
        assert sampled.shape == (3, out or channels, *size), case
        assert offsets.shape == (3, 2 * groups * 9, *size), case
        # One offset conv per deformable conv: num_convs of each, as g^(1)..g^(4) in §4.
        assert len(block.layers) + 1 == num_convs, case


def test_sampling_block_shapes_cpu():
    check_sampling_block_shapes("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_block_shapes_cuda():
    check_sampling_block_shapes("cuda")


def test_sampling_starts_as_identity_of_the_support_map():
    # Zero offset convs sample the integer grid (bilinear weights exactly 1 and 0) and the
    # identity-initialised last conv copies its input: g_{t,t+k} = f_{t+k} bit for bit.
    block = _stsn().sampling
    for seed in range(3):
        ref, support, _ = _features(2, 1, seed=seed)
        sampled, offsets = block(ref, support[:, 0], return_offsets=True)
        assert torch.equal(offsets, torch.zeros_like(offsets)), seed
        assert torch.equal(sampled, support[:, 0]), seed


def test_sampling_depends_on_the_reference_through_the_offsets():
    # The reference only moves the sampling locations: with random offset convs, changing the
    # reference changes g_{t,t+k}, while the values still come from the support map (a zero
    # support map gives the bias alone).
    block = _randomize(_stsn().sampling)
    ref, support, _ = _features(2, 2)
    a = block(ref, support[:, 0])
    b = block(support[:, 1], support[:, 0])
    assert not torch.allclose(a, b)
    bias = block.sample.conv.bias[None, :, None, None].expand_as(a)
    for r in (ref, support[:, 1]):
        torch.testing.assert_close(block(r, torch.zeros_like(r)), bias)


def test_bad_sampling_block_arguments_name_the_key():
    with pytest.raises(ValueError, match="MODEL.STSN.NUM_CONVS"):
        SpatioTemporalSamplingBlock(6, num_convs=0)
    with pytest.raises(ValueError, match="MODEL.STSN.DEFORMABLE_GROUPS"):
        SpatioTemporalSamplingBlock(6, conv_dim=8, deformable_groups=4)
    with pytest.raises(ValueError, match="MODEL.STSN.EMBED_DIMS"):
        AggregationEmbedding(6, (4, 4))
    block = SpatioTemporalSamplingBlock(6, conv_dim=8)
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\)"):
        block(torch.zeros(1, 5, 3, 3), torch.zeros(1, 5, 3, 3))


# ---------------------------------------------------------------- aggregation (Eq. 3-4)


def check_identical_frames_give_the_reference(device):
    # Identical frames make every g_{t,t+k} equal to g_{t,t}: Eq. 3 averages copies of it,
    # whatever the (here random, fractional) offsets and weights.
    for num_support, seed in itertools.product([0, 1, 2, 26], range(2)):
        module = _randomize(_stsn(seed=seed), seed=seed).double().to(device)
        ref, _, _ = _features(2, 0, seed=seed, dtype=torch.float64)
        ref = ref.to(device)
        support = ref[:, None].expand(-1, num_support, -1, -1, -1)
        offsets = torch.zeros(2, num_support, dtype=torch.int64, device=device)
        out = _call(module, ref, support, offsets)
        expected = module.sampling(ref, ref)
        assert not torch.allclose(expected, ref), (num_support, seed)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # At initialisation (zero offsets, identity sampling) that is the reference map itself.
    module = _stsn().to(device)
    for num_support in [0, 1, 2, 26]:
        ref, _, _ = _features(3, 0)
        ref = ref.to(device)
        support = ref[:, None].expand(-1, num_support, -1, -1, -1)
        out = _call(
            module, ref, support, torch.zeros(3, num_support, dtype=torch.int64, device=device)
        )
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, msg=f"S={num_support}")


def test_identical_frames_give_the_reference_cpu():
    check_identical_frames_give_the_reference("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_identical_frames_give_the_reference_cuda():
    check_identical_frames_give_the_reference("cuda")


def check_weights_are_a_per_pixel_distribution(device):
    for num_support, seed in itertools.product([1, 2, 26], range(3)):
        module = _randomize(_stsn(seed=seed), seed=seed).to(device)
        ref, support, offsets = (x.to(device) for x in _features(2, num_support, seed=seed))
        out, weights = module.aggregate(ref, support, return_weights=True)
        case = (num_support, seed)
        assert out.shape == ref.shape, case
        assert weights.shape == (2, 1 + num_support, 5, 7), case
        assert (weights > 0).all(), case
        torch.testing.assert_close(weights.sum(dim=1), torch.ones_like(weights[:, 0]))
        # The reference is the support frame most similar to itself (cosine 1).
        assert (weights[:, :1] >= weights - 1e-6).all(), case
        # exp(cos) / sum exp(cos) with cos in [-1, 1]: no weight beyond e^2 times another.
        assert (weights.max(dim=1).values <= math.e**2 * weights.min(dim=1).values + 1e-6).all()


def test_weights_are_a_per_pixel_distribution_cpu():
    check_weights_are_a_per_pixel_distribution("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_weights_are_a_per_pixel_distribution_cuda():
    check_weights_are_a_per_pixel_distribution("cuda")


def test_aggregation_matches_eq3_and_eq4_written_out():
    module = _randomize(_stsn()).double()
    ref, support, offsets = _features(2, 3, dtype=torch.float64)
    out, weights = module.aggregate(ref, support, return_weights=True)
    # Two passes of 2 pairs each accumulate the same sums.
    module.pairs_per_pass = 2
    out_in_passes, weights_in_passes = module.aggregate(ref, support, return_weights=True)
    torch.testing.assert_close(out_in_passes, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights_in_passes, weights, rtol=1e-12, atol=1e-12)
    frames = [ref] + list(support.unbind(1))
    sampled = [module.sampling(ref, f) for f in frames]

    def embed(x):  # S(.) without the normalisation, which the cosine of Eq. 4 does instead
        convs = module.embedding.convs
        return convs[2](F.relu(convs[1](F.relu(convs[0](x)))))

    cosines = [F.cosine_similarity(embed(sampled[0]), embed(g), dim=1) for g in sampled]
    exp = [torch.exp(c) for c in cosines]  # Eq. 4
    expected_weights = [e / sum(exp) for e in exp]  # the softmax over the 2K+1 frames
    expected = sum(w[:, None] * g for w, g in zip(expected_weights, sampled))  # Eq. 3
    for k in range(4):
        torch.testing.assert_close(weights[:, k], expected_weights[k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_passes_over_the_window_do_not_change_the_result():
    module = _randomize(_stsn())
    ref, support, offsets = _features(2, 26)
    whole, weights = module.aggregate(ref, support, return_weights=True)
    for pairs in [1, 2, 5, 8, 26, 27, 40]:
        module.pairs_per_pass = pairs
        out, w = module.aggregate(ref, support, return_weights=True)
        torch.testing.assert_close(out, whole, msg=f"{pairs} pairs per pass")
        torch.testing.assert_close(w, weights, msg=f"{pairs} pairs per pass")
    with pytest.raises(ValueError, match="MODEL.STSN.PAIRS_PER_PASS"):
        _stsn(pairs=-1)


def test_aggregation_is_invariant_to_the_order_of_support_frames():
    module = _randomize(_stsn())
    ref, support, offsets = _features(2, 4)
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        _call(module, ref, support, offsets),
        _call(module, ref, support[:, order], offsets[:, order]),
    )


def test_gradcheck_float64():
    module = _randomize(_stsn(channels=3, conv_dim=2)).double()
    ref, support, offsets = _features(1, 2, channels=3, size=(3, 4), dtype=torch.float64)
    ref.requires_grad_()
    support.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r, s: _call(module, r, s, offsets), (ref, support), eps=1e-6, atol=1e-5
    )


def test_offsets_learn_from_the_identity_initialisation():
    # At init the sampled map depends on g^(1)..g^(3) only through the zero last offset conv,
    # so that conv alone gets a gradient (like a zero-initialised residual branch); after one
    # step every parameter does: zero offsets are not a dead start.
    module = _stsn()
    ref, support, offsets = _features(2, 2)
    target = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
    for step in range(2):
        optimizer.zero_grad()
        (_call(module, ref, support, offsets) - target).square().mean().backward()
        for name, p in module.named_parameters():
            learns = p.grad.abs().sum() > 0
            first_step_only = name.startswith("sampling.sample.") or name.startswith("embedding.")
            assert learns if step or first_step_only else not learns, (step, name)
        optimizer.step()


def test_ssn_is_the_reference_sampled_for_itself():
    torch.manual_seed(0)
    sampling = _randomize(SpatioTemporalSamplingBlock(6, conv_dim=5))
    ssn = SSNAggregation(sampling=sampling, input_shape=ShapeSpec(channels=6, stride=16))
    ref, support, offsets = _features(2, 3)
    out = _call(ssn, ref, support, offsets)
    torch.testing.assert_close(out, sampling(ref, ref))
    torch.testing.assert_close(_call(ssn, ref, support[:, :0], offsets[:, :0]), out)
    torch.testing.assert_close(_call(ssn, ref, -support, offsets), out)
    # STSN with no support frame is SSN; an SSN checkpoint initialises STSN's sampling block.
    stsn = _stsn(seed=3)
    missing, unexpected = stsn.load_state_dict(ssn.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("embedding.") for k in missing)
    torch.testing.assert_close(_call(stsn, ref, support[:, :0], offsets[:, :0]), out)


def test_bad_aggregation_inputs_are_refused():
    module = _stsn()
    ref, support, offsets = _features(2, 2)
    with pytest.raises(ValueError, match="support maps"):
        _call(module, ref, support[:, :, :3], offsets)
    with pytest.raises(ValueError, match="offsets"):
        _call(module, ref, support, offsets[:, :1])


# ---------------------------------------------------------------- config and registry


def _cfg(path=STSN_CONFIG, **overrides):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def test_registry_builds_stsn_and_ssn_from_the_config():
    shape = ShapeSpec(channels=16, stride=16)
    for name, out_channels in itertools.product(["STSNAggregation", "SSNAggregation"], [0, 24]):
        cfg = _cfg(**{"MODEL.VIDEO.AGGREGATION": name, "MODEL.STSN.OUT_CHANNELS": out_channels})
        cfg.MODEL.STSN.CONV_DIM = 8
        module = build_temporal_aggregation(cfg, shape).eval()
        assert type(module).__name__ == name
        assert module.output_shape() == ShapeSpec(channels=out_channels or 16, stride=16)
        ref, support, offsets = _features(1, 2, channels=16)
        assert _call(module, ref, support, offsets).shape == (1, out_channels or 16, 5, 7)


@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_paper_configs_follow_section_4_1(path):
    cfg = _cfg(path)
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.3
    assert (cfg.MODEL.STSN.NUM_CONVS, cfg.MODEL.STSN.CONV_DIM) == (4, 1024)
    assert cfg.MODEL.STSN.OUT_CHANNELS == 1024
    assert tuple(cfg.MODEL.STSN.EMBED_DIMS) == (512, 512, 2048)
    if "ssn" in path:
        assert cfg.MODEL.VIDEO.AGGREGATION == "SSNAggregation"
        assert tuple(cfg.MODEL.VIDEO.TEST_WINDOW) == (0, 0)
        assert cfg.INPUT.VIDEO.TRAIN_SAMPLING == "none"
    else:
        assert cfg.MODEL.VIDEO.AGGREGATION == "STSNAggregation"
        assert tuple(cfg.MODEL.VIDEO.TEST_WINDOW) == (13, 13)  # T = 27
        assert cfg.INPUT.VIDEO.TRAIN_SAMPLING == "before_after"  # T = 3 in training
        assert cfg.INPUT.VIDEO.TRAIN_NUM_SUPPORT == 2
    assert cfg.TEST.SEQ_NMS.ENABLED == ("plus" in path)


@pytest.mark.parametrize(
    "path", ["configs/synthetic/stsn.yaml", "configs/synthetic/stsn_rfcn.yaml"]
)
def test_synthetic_stsn_tests_on_as_many_frames_as_it_trains_on(path):
    # Eq. 3 normalises the weights over the window: with T frames the reference's share is about
    # 1 / T, so testing on another T than training's gives the reference another weight. The
    # test frames stay inside the training range.
    cfg = _cfg(path)
    before, after = cfg.MODEL.VIDEO.TEST_WINDOW
    assert before + after == cfg.INPUT.VIDEO.TRAIN_NUM_SUPPORT
    assert max(before, after) * cfg.MODEL.VIDEO.TEST_STRIDE <= cfg.INPUT.VIDEO.TRAIN_RANGE


# ---------------------------------------------------------------- in VideoRCNN


def _model(window=(13, 13), stride=1):
    cfg = _cfg(
        **{
            "MODEL.VIDEO.TEST_WINDOW": window,
            "MODEL.VIDEO.TEST_STRIDE": stride,
            "MODEL.RPN.POST_NMS_TOPK_TEST": 10,
            "INPUT.MIN_SIZE_TEST": 64,
        }
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _record_backbone(model):
    """Wrap the backbone: returns the list of its input batch sizes and of its output maps."""
    calls, maps = [], []
    forward = model.backbone.forward

    def recording(x):
        out = forward(x)
        calls.append(x.shape[0])
        maps.append(out[model.in_features[0]])
        return out

    model.backbone.forward = recording
    return calls, maps


def test_backbone_runs_once_per_frame_over_a_test_video_at_k13():
    model = _model(window=(13, 13))
    calls, _ = _record_backbone(model)
    cached = []
    aggregate = model.temporal_aggregation.forward

    def counting(ref, support, offsets, frames):
        cached.append(model.num_cached_tensors())
        assert support["feature"].shape[1] == 26
        return aggregate(ref, support, offsets, frames)

    model.temporal_aggregation.forward = counting
    done = list(run_on_video(model, random_video(31)))
    assert calls == [1] * 31
    assert [meta["frame_idx"] for meta, _ in done] == list(range(31))
    # The cache never holds more than the 2K+1 frames of one window (one map each), plus the
    # pending frames' images (the 13 of the look-ahead and the frame being detected).
    assert len(cached) == 31 and max(cached) <= 27 + 14


def _padded_windows(num_frames, k, stride):
    """The paper's boundary rule, written out: pad with K copies of the first and last frame."""
    padded = [0] * (k * stride) + list(range(num_frames)) + [num_frames - 1] * (k * stride)
    return [
        [padded[t + k * stride + j * stride] for j in range(-k, k + 1) if j != 0]
        for t in range(num_frames)
    ]


def test_boundary_padding_on_a_three_frame_video():
    for k, stride in [(13, 1), (2, 2), (1, 1)]:
        model = _model(window=(k, k), stride=stride)
        _, maps = _record_backbone(model)
        seen = []
        aggregate = model.temporal_aggregation.forward

        def recording(ref, support, offsets, frames):
            seen.append((ref["feature"], support["feature"][0], offsets[0].tolist()))
            return aggregate(ref, support, offsets, frames)

        model.temporal_aggregation.forward = recording
        list(run_on_video(model, random_video(3, seed=k)))
        expected = _padded_windows(3, k, stride)
        assert len(seen) == 3, (k, stride)
        for t, (ref, support, offsets) in enumerate(seen):
            assert torch.equal(ref, maps[t]), (k, stride, t)
            frames = [
                [i for i, m in enumerate(maps) if torch.equal(m[0], s)] for s in support.unbind(0)
            ]
            assert frames == [[i] for i in expected[t]], (k, stride, t)
            assert offsets == [i - t for i in expected[t]], (k, stride, t)


# ---------------------------------------------------------------- training and evaluation


@pytest.mark.usefixtures("synthetic_datasets")
def test_few_training_iterations_then_evaluation_on_cpu(tmp_path):
    cfg = _cfg(**{"MODEL.RPN.POST_NMS_TOPK_TEST": 20})
    trainer = brief_trainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.temporal_aggregation.state_dict().items()}
    trainer.train()
    assert len(trained_losses(trainer)) == 2
    # The sampling block and the embedding both learn from the detection losses.
    after = trainer.model.temporal_aggregation.state_dict()
    for prefix in ("sampling.layers.0.conv", "sampling.sample.offset", "embedding.convs.0"):
        assert not torch.equal(before[prefix + ".weight"], after[prefix + ".weight"]), prefix
    assert 0.0 <= evaluate_on_synthetic(cfg, trainer.model)["mAP"] <= 100.0
