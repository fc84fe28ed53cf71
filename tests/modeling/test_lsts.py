import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.solver import get_default_optimizer_params
from torch import nn

from vod_d2 import add_vod_config
from vod_d2.layers import DeformableSimilaritySampling, deformable_similarity_sampling_reference
from vod_d2.modeling.temporal.build import TemporalModule
from vod_d2.modeling.temporal.lsts import (
    LOCATIONS_PARAMETER,
    LSTS,
    LSTSFeatureFusion,
    TransformUnit,
    lsts_optimizer_overrides,
)

C, C_LOW = 6, 4


def _cfg(identity_init=False, **lsts):
    """A tiny LSTS; the tests of the paper's units build it without the residual gates."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.VIDEO.IDENTITY_INIT = identity_init
    cfg.MODEL.LSTS.EMBED_CHANNELS = 3
    cfg.MODEL.LSTS.NUM_POINTS = 9
    cfg.MODEL.LSTS.TRANSFORM_DIMS = (5, 5)
    for key, value in lsts.items():
        cfg.MODEL.LSTS[key] = value
    return cfg


def _fusion(low_channels=C_LOW, seed=0, identity_init=False, **lsts):
    torch.manual_seed(seed)
    return LSTSFeatureFusion(
        _cfg(identity_init, **lsts), ShapeSpec(channels=low_channels), ShapeSpec(channels=C)
    )


def test_with_identity_init_key_frames_keep_their_feature_and_others_the_propagated_memory():
    # At iteration 0 SRFU gives a key frame its own feature, and DFA a non-key frame the
    # memory aligned to it (the Transform unit, about zero at init, would otherwise halve it:
    # relative error 0.5 and more); both quality nets start at equal weights.
    fusion = _fusion(identity_init=True).eval()
    first, second, low = _maps(C, 0), _maps(C, 1), _maps(C_LOW, 2)
    memory = fusion.update_memory(second, fusion.update_memory(first))
    assert torch.equal(memory, second)
    task = fusion.propagate(low, memory)
    high = fusion.dfa.transform(low)
    aligned = fusion.dfa.lsts(memory, high, fusion.sampling)
    assert torch.equal(task, aligned)
    for unit in (fusion.srfu.aggregation, fusion.dfa.aggregation):
        weights = unit.weights([second, second * 2])
        assert torch.equal(weights, torch.full_like(weights, 0.5))
    paper = _fusion()
    paper_task = paper.propagate(low, paper.update_memory(second, paper.update_memory(first)))
    paper_aligned = paper.dfa.lsts(second, paper.dfa.transform(low), paper.sampling)
    assert (paper_task - paper_aligned).norm() > 0.3 * paper_aligned.norm()
    # Open gates: the paper's fusion.
    for gate in (fusion.srfu.residual_gate, fusion.dfa.residual_gate):
        gate.fix_opening(1.0)
    torch.testing.assert_close(fusion.propagate(low, memory), (high + aligned) / 2)


def _maps(channels, seed, shape=(1, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape[0], channels, *shape[1:], generator=g)


def _smooth_map(seed, channels=3, size=16):
    """Noise upsampled 4x: varies over a few cells, so a shift of ~1 cell is learnable."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, size // 4 + 2, size // 4 + 2, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def _set_conv(conv, weight, bias):
    with torch.no_grad():
        conv.weight.fill_(weight)
        conv.bias.fill_(bias)


@pytest.mark.parametrize(
    "normalization,expected",
    [
        # s = (0.5 * 1, 0.5 * 2) at column 0, (1, 1.5) at column 1, (1.5, 0: outside) at column 2;
        # Eq. 3 divides by the sum, then Eq. 4 averages the *un-embedded* values (1, 2), ...
        ("sum", [(1 * 1 + 2 * 2) / 3, (2 * 2 + 3 * 3) / 5, 3.0]),
        (
            "softmax",
            [
                (math.exp(0.5) * 1 + math.exp(1) * 2) / (math.exp(0.5) + math.exp(1)),
                (math.exp(1) * 2 + math.exp(1.5) * 3) / (math.exp(1) + math.exp(1.5)),
                (math.exp(1.5) * 3 + 1 * 0) / (math.exp(1.5) + 1),
            ],
        ),
    ],
)
def test_normalisation_on_a_hand_worked_case(normalization, expected):
    # One row F_t = [1, 2, 3], two points (dy, dx) = (0, 0) and (0, 1). f(x) = x / 2 embeds the
    # support and g(x) = x + 1 the all-zero target, so the query is 1 and s_n = F_t(p_n) / 2.
    lsts = LSTS(1, 1, embed_channels=1)
    _set_conv(lsts.embed_support, 0.5, 0.0)
    _set_conv(lsts.embed_target, 1.0, 1.0)
    sampling = DeformableSimilaritySampling(2, normalization=normalization)
    with torch.no_grad():
        sampling.offsets.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    support = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    out = lsts(support, torch.zeros_like(support), sampling)
    torch.testing.assert_close(out, torch.tensor([[[expected]]]), atol=1e-5, rtol=1e-5)


def test_locations_learn_a_known_shift():
    # With one point the weight is 1 and DFA (no transform, no fusion) returns memory(p0 + dp):
    # the target, the memory sampled at p0 + SHIFT, is matched only by dp = SHIFT.
    shift = torch.tensor([[0.7, -1.3]])
    fusion = _fusion(
        low_channels=3, NUM_POINTS=1, NON_KEY_AGGREGATION="none", TRANSFORM=False, seed=1
    )
    with torch.no_grad():
        fusion.sampling.offsets.zero_()
    memory = _smooth_map(0)
    memory = torch.cat([memory, memory.new_zeros(1, C - 3, 16, 16)], dim=1)
    target = deformable_similarity_sampling_reference(memory, memory, memory, shift)
    low = _smooth_map(1)
    cfg = _cfg(LOCATIONS_LR_MULT=100.0)
    cfg.SOLVER.BASE_LR = 0.01
    optimizer = torch.optim.SGD(
        get_default_optimizer_params(
            fusion, base_lr=0.01, weight_decay=0.0, overrides=lsts_optimizer_overrides(cfg)
        ),
        lr=0.01,
    )
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # samples stay in the map
    start = fusion.sampling.offsets.detach().clone()
    errors = []
    for step in range(60):
        loss = F.mse_loss(fusion.propagate(low, memory)[inner], target[inner])
        optimizer.zero_grad()
        loss.backward()
        assert fusion.sampling.offsets.grad.abs().sum() > 0
        optimizer.step()
        errors.append((fusion.sampling.offsets.detach() - shift).abs().max().item())
        if step == 0:
            assert not torch.equal(fusion.sampling.offsets.detach(), start)
    assert errors[-1] < 0.02, errors
    assert errors[-1] < errors[0] / 20


def test_frozen_locations_do_not_move_and_others_train():
    for learn in (True, False):
        fusion = _fusion(INIT="gaussian", LEARN_LOCATIONS=learn)
        start = fusion.sampling.offsets.detach().clone()
        embed = fusion.dfa.lsts.embed_target.weight.detach().clone()
        optimizer = torch.optim.SGD(get_default_optimizer_params(fusion, base_lr=0.5), lr=0.5)
        for step in range(3):
            fusion.reset()
            fusion.key_frame(_maps(C, 10 * step))
            fusion.key_frame(_maps(C, 10 * step + 1))
            loss = fusion.non_key_frame(_maps(C_LOW, 10 * step + 2)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert fusion.sampling.offsets.requires_grad == learn
        assert torch.equal(fusion.sampling.offsets.detach(), start) != learn
        assert not torch.equal(fusion.dfa.lsts.embed_target.weight.detach(), embed)


def test_optimizer_overrides_give_the_locations_their_lr_and_no_decay():
    cfg = _cfg(LOCATIONS_LR_MULT=2.5, LOCATIONS_WEIGHT_DECAY=0.0)
    cfg.SOLVER.BASE_LR = 0.01
    fusion = _fusion()
    groups = get_default_optimizer_params(
        fusion, base_lr=0.01, weight_decay=1e-4, overrides=lsts_optimizer_overrides(cfg)
    )
    offsets = fusion.sampling.offsets
    assert dict(fusion.sampling.named_parameters(recurse=False)) == {LOCATIONS_PARAMETER: offsets}
    for group in groups:
        for param in group["params"]:
            if param is offsets:
                assert (group["lr"], group["weight_decay"]) == (pytest.approx(0.025), 0.0)
            else:
                assert (group["lr"], group["weight_decay"]) == (0.01, 1e-4)


def test_config_reaches_the_modules():
    fusion = _fusion(NORMALIZATION="sum", NUM_POINTS=5, EMBED_CHANNELS=2, TRANSFORM_DIMS=(3, 4))
    assert (fusion.sampling.normalization, fusion.sampling.num_points) == ("sum", 5)
    for lsts in (fusion.srfu.lsts, fusion.dfa.lsts):
        assert lsts.embed_support.out_channels == lsts.embed_target.out_channels == 2
        assert (lsts.embed_support.in_channels, lsts.embed_target.in_channels) == (C, C)
    convs = [m for m in fusion.dfa.transform if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(C_LOW, 3), (3, 4), (4, C)]


def test_gaussian_and_grid_initialisation():
    offsets = _fusion(INIT="grid", NUM_POINTS=81).sampling.offsets.detach()
    # The authors' "uniform" locations: every integer (dy, dx) with |dy|, |dx| <= 4, once.
    assert sorted(map(tuple, offsets.tolist())) == [
        (float(dy), float(dx)) for dy in range(-4, 5) for dx in range(-4, 5)
    ]
    offsets = _fusion(INIT="gaussian", NUM_POINTS=4000).sampling.offsets.detach()
    # Zero mean, identity covariance: 4000 samples put the mean within 0.06 and std within 0.05.
    assert offsets.mean(dim=0).abs().max() < 0.06
    assert (offsets.std(dim=0) - 1).abs().max() < 0.05
    assert torch.corrcoef(offsets.T)[0, 1].abs() < 0.06
    assert not torch.equal(offsets, offsets.round())


def _capture(module):
    """Records the inputs and output of every call of ``module``."""
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append((list(args[0]), out)))
    return calls


def test_srfu_memory_is_the_fused_key_frame_and_its_weights_sum_to_one():
    fusion = _fusion()
    calls = _capture(fusion.srfu.aggregation)
    first, second = _maps(C, 0), _maps(C, 1)
    # The first key frame of a video keeps its own feature (no memory yet).
    assert torch.equal(fusion.key_frame(first), first)
    assert calls == []
    task = fusion.key_frame(second)
    assert fusion.memory is task
    ((inputs, out),) = calls
    torch.testing.assert_close(inputs[0], second)
    torch.testing.assert_close(inputs[1], fusion.srfu.lsts(first, second, fusion.sampling))
    weights = fusion.srfu.aggregation.weights(inputs)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(1, 1, 5, 7))
    assert weights.std() > 0  # position-wise quality weights, not a constant
    torch.testing.assert_close(task, weights[0] * inputs[0] + weights[1] * inputs[1])


def test_dfa_fuses_the_transformed_frame_with_the_aligned_memory():
    fusion = _fusion()
    calls = _capture(fusion.dfa.aggregation)
    memory, low = _maps(C, 0), _maps(C_LOW, 1)
    fusion.key_frame(memory)
    task = fusion.non_key_frame(low)
    assert fusion.memory is not None and torch.equal(fusion.memory, memory)
    ((inputs, out),) = calls
    high = fusion.dfa.transform(low)
    torch.testing.assert_close(inputs[0], high)
    torch.testing.assert_close(inputs[1], fusion.dfa.lsts(memory, high, fusion.sampling))
    weights = fusion.dfa.aggregation.weights(inputs)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(1, 1, 5, 7))
    torch.testing.assert_close(task, weights[0] * inputs[0] + weights[1] * inputs[1])


def test_memory_embedding_is_computed_once_per_key_frame():
    fusion = _fusion()
    calls = []
    fusion.dfa.lsts.embed_support.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for seed in (0, 1):  # two segments: the second key frame's memory replaces the first's
            before = len(calls)
            fusion.key_frame(_maps(C, seed))
            lows = [_maps(C_LOW, 10 + k) for k in range(3)]
            tasks = [fusion.non_key_frame(low) for low in lows]
            assert len(calls) == before + 1
            for low, task in zip(lows, tasks):
                # The shared embedding is that of the current memory.
                assert torch.equal(task, fusion.dfa(low, fusion.memory, fusion.sampling))


def test_memory_does_not_leak_between_videos():
    fusion = _fusion()
    # VideoDetector.reset() resets every TemporalModule that overrides reset() before each video.
    assert isinstance(fusion, TemporalModule) and type(fusion).reset is not TemporalModule.reset
    video_b = [("key", _maps(C, 20)), ("low", _maps(C_LOW, 21)), ("key", _maps(C, 22))]

    def run(video):
        fusion.reset()
        assert fusion.memory is None
        return [
            fusion.key_frame(x) if kind == "key" else fusion.non_key_frame(x) for kind, x in video
        ]

    with torch.no_grad():
        reference = run(video_b)
        for seed in (1, 2):
            run([("key", _maps(C, seed)), ("low", _maps(C_LOW, seed + 5))])
            for got, expected in zip(run(video_b), reference):
                assert torch.equal(got, expected)
    fusion.reset()
    with pytest.raises(RuntimeError, match="must start with a key frame"):
        fusion.non_key_frame(_maps(C_LOW, 0))


# Table 2 (a)-(g): memory update, non-key aggregation, transform.
TABLE_2 = {
    "a": ("none", "none", False),
    "b": ("fixed", "none", False),
    "c": ("quality", "none", False),
    "d": ("quality", "fixed", False),
    "e": ("quality", "fixed", True),
    "f": ("quality", "quality", False),
    "g": ("quality", "quality", True),
}


@pytest.mark.parametrize("row", sorted(TABLE_2))
def test_table_2_rows_build_and_train(row):
    update, aggregation, transform = TABLE_2[row]
    fusion = _fusion(
        low_channels=C,  # without the Transform unit the low-level map is fused as it is
        MEMORY_UPDATE=update,
        NON_KEY_AGGREGATION=aggregation,
        TRANSFORM=transform,
    )
    assert (fusion.dfa.transform is not None) == transform
    for unit, mode in ((fusion.srfu.aggregation, update), (fusion.dfa.aggregation, aggregation)):
        assert (unit is not None) == (mode != "none")
        assert mode == "none" or (unit.quality_net is not None) == (mode == "quality")
    first, second, low = _maps(C, 0), _maps(C, 1), _maps(C, 2)
    memory = fusion.update_memory(second, fusion.update_memory(first))
    task = fusion.propagate(low, memory)
    if update == "none":
        assert torch.equal(memory, second)  # (a): the key frame's own feature
    if update == "fixed":
        aligned = fusion.srfu.lsts(first, second, fusion.sampling)
        torch.testing.assert_close(memory, (second + aligned) / 2)
    if aggregation == "none":
        high = fusion.dfa.transform(low) if transform else low
        torch.testing.assert_close(task, fusion.dfa.lsts(memory, high, fusion.sampling))
    (task.square().mean() + memory.square().mean()).backward()
    # Every parameter of the row is used, so DDP needs no unused-parameter search; all but the
    # quality nets' last bias, which shifts both scores alike (a softmax cannot see it), learn.
    for name, param in fusion.named_parameters():
        assert param.grad is not None, name
        assert name.endswith("quality_net.convs.2.bias") or param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("init,num_points", [("gaussian", 40), ("grid", 81)])
@pytest.mark.parametrize("learn", [True, False])
def test_table_4_rows_build_and_train(init, num_points, learn):
    fusion = _fusion(INIT=init, NUM_POINTS=num_points, LEARN_LOCATIONS=learn)
    assert fusion.sampling.offsets.shape == (num_points, 2)
    fusion.key_frame(_maps(C, 0))
    fusion.key_frame(_maps(C, 1))
    fusion.non_key_frame(_maps(C_LOW, 2)).square().mean().backward()
    grad = fusion.sampling.offsets.grad
    assert (grad is not None and grad.abs().sum() > 0) if learn else grad is None
    assert fusion.dfa.lsts.embed_support.weight.grad.abs().sum() > 0


def test_transform_unit_layout():
    unit = TransformUnit(4, 6, dims=(5, 7), kernel_sizes=(1, 3, 3))
    convs = [m for m in unit if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (4, 5, (1, 1)),
        (5, 7, (3, 3)),
        (7, 6, (3, 3)),
    ]
    # A ReLU after every conv but the last (the authors' low2high): the output can be negative.
    assert [isinstance(m, nn.ReLU) for m in unit] == [False, True, False, True, False]
    out = unit(_maps(4, 0, shape=(1, 6, 6)))
    assert out.shape == (1, 6, 6, 6) and (out < 0).any()


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="MODEL.LSTS.MEMORY_UPDATE"):
        _fusion(MEMORY_UPDATE="average")
    with pytest.raises(ValueError, match="MODEL.LSTS.NON_KEY_AGGREGATION"):
        _fusion(NON_KEY_AGGREGATION="max")
    with pytest.raises(ValueError, match="must be as wide"):
        _fusion(low_channels=C_LOW, TRANSFORM=False)
    _fusion(low_channels=C_LOW, TRANSFORM=False, NON_KEY_AGGREGATION="none")
    with pytest.raises(ValueError, match="TRANSFORM_KERNEL_SIZES"):
        _fusion(TRANSFORM_KERNEL_SIZES=(3, 3))
    fusion = _fusion()
    fusion.key_frame(_maps(C, 0))
    with pytest.raises(ValueError, match="reset"):
        fusion.key_frame(_maps(C, 1, shape=(1, 5, 8)))
    with pytest.raises(ValueError, match="reset"):
        fusion.non_key_frame(_maps(C_LOW, 1, shape=(2, 5, 7)))
