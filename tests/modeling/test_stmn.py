import itertools

import pytest
import torch
import torch.nn.functional as F
from _testing import (
    brief_trainer,
    count_backbone_calls,
    evaluate_on_synthetic,
    random_video,
    seeded_model,
    stmn_cfg,
    trained_losses,
)
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from vod_d2 import add_vod_config
from vod_d2.engine import run_on_video
from vod_d2.modeling.temporal.stmn import (
    ConvGRUCell,
    STMMCell,
    STMNAggregation,
    STMNSingleFrameAggregation,
    bn_star,
)

STMN_CONFIGS = [
    "configs/stmn_R50_DC5.yaml",
    "configs/stmn_R101_DC5.yaml",
    "configs/stmn_R101_RFCN.yaml",
    "configs/synthetic/stmn.yaml",
    "configs/synthetic/stmn_rfcn.yaml",
]


def _aggregation(channels=6, memory=4, **kwargs):
    """A small STMNAggregation whose training output is the references' memories."""
    kwargs.setdefault("per_frame_loss", False)
    torch.manual_seed(0)
    return STMNAggregation(
        input_shape=ShapeSpec(channels=channels, stride=16), memory_channels=memory, **kwargs
    )


# ---------------------------------------------------------------- BN* (§3.2, Fig. 3)


def test_bn_star_output_is_a_gate_for_every_element():
    g = torch.Generator().manual_seed(0)
    for trial, scale in itertools.product(range(5), [1e-4, 1.0, 1e4]):
        x = F.relu(torch.randn(2, 3, 5, 7, generator=g)) * scale
        x[0, 0, 0, :trial] = 1e3 * scale  # outliers above the bound
        for inputs in [x, -x, torch.zeros_like(x), x - 0.5 * scale]:
            y = bn_star(inputs)
            assert y.shape == inputs.shape
            assert ((y >= 0) & (y <= 1)).all(), (trial, scale)
            # A linear squash with clipping is non-decreasing.
            order = inputs.flatten().argsort()
            assert (y.flatten()[order].diff() >= 0).all(), (trial, scale)


def test_bn_star_matches_fig3_on_a_hand_example():
    # Positive values: fifteen 1s and one 17. mean = 32 / 16 = 2; squared deviations
    # 15 * 1 + 15^2 = 240, unbiased variance 240 / 15 = 16, std 4; bound 2 + 3 * 4 = 14.
    # Zeros and negatives are outside the statistics and map to 0; 17 > 14 clips to 1.
    x = torch.tensor([1.0] * 15 + [17.0, 0.0, 0.0, -3.0]).view(1, 1, 1, -1)
    expected = torch.tensor([1 / 14] * 15 + [1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, -1)
    torch.testing.assert_close(bn_star(x, k=3.0), expected)
    # K moves the bound: k = 0.5 gives 2 + 2 = 4.
    torch.testing.assert_close(bn_star(x, k=0.5), (x / 4).clamp(0, 1))


def test_bn_star_normalises_by_batch_statistics():
    g = torch.Generator().manual_seed(1)
    x = F.relu(torch.randn(2, 4, 6, 6, generator=g))
    for scale in [1e-3, 0.5, 7.0, 1e3]:
        torch.testing.assert_close(bn_star(scale * x), bn_star(x))


def test_bn_star_statistics_do_not_overflow_in_half_precision():
    x = F.relu(torch.randn(2, 64, 40, 60, generator=torch.Generator().manual_seed(2))) * 300
    y = bn_star(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), bn_star(x), atol=2e-3, rtol=0)


# ---------------------------------------------------------------- STMM / ConvGRU cells


def _conv(x, weight, kernel):
    return F.conv2d(x, weight, padding=kernel // 2)


@pytest.mark.parametrize("cell_type,activation", [(STMMCell, F.relu), (ConvGRUCell, torch.tanh)])
def test_cell_with_open_gates_is_activation_of_w_f_plus_u_m(cell_type, activation):
    """z = r = 1 in Eq. 1-4 leaves M_t = act(W * F_t + U * M'_{t-1})."""
    for seed, (kernel, memory_kernel) in enumerate([(3, 3), (1, 3), (3, 1)]):
        torch.manual_seed(seed)
        cell = cell_type(5, 4, kernel, memory_kernel)
        cell.gate_activation = torch.ones_like
        features, memory = torch.randn(2, 5, 6, 7), torch.randn(2, 4, 6, 7)
        out = cell(cell.project(features), memory)
        w = cell.input_conv.weight[8:]  # third block: W
        expected = activation(
            _conv(features, w, kernel)
            + cell.input_conv.bias[8:, None, None]
            + _conv(memory, cell.candidate_conv.weight, memory_kernel)
        )
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("cell_type", [STMMCell, ConvGRUCell])
def test_cell_with_closed_update_gate_keeps_the_memory(cell_type):
    torch.manual_seed(0)
    cell = cell_type(5, 4)
    cell.gate_activation = torch.zeros_like
    memory = torch.randn(2, 4, 6, 7)
    torch.testing.assert_close(cell(cell.project(torch.randn(2, 5, 6, 7)), memory), memory)


@pytest.mark.parametrize("cell_type", [STMMCell, ConvGRUCell])
def test_first_step_is_the_step_from_a_zero_memory(cell_type):
    torch.manual_seed(0)
    cell = cell_type(5, 4)
    projected = cell.project(torch.randn(3, 5, 6, 7))
    torch.testing.assert_close(
        cell(projected, None), cell(projected, torch.zeros(3, 4, 6, 7)), rtol=0, atol=0
    )


def test_stmm_memory_stays_non_negative_and_convgru_in_unit_range():
    torch.manual_seed(0)
    for cell_type, low, high in [(STMMCell, 0.0, float("inf")), (ConvGRUCell, -1.0, 1.0)]:
        cell = cell_type(5, 4)
        memory = None
        for _ in range(4):
            memory = cell(cell.project(torch.randn(2, 5, 6, 7)), memory)
            assert memory.min() >= low and memory.max() <= high, cell_type


# ---------------------------------------------------------------- MatchTrans (§3.3)


def _one_hot_codes(h, w, device):
    """(1, h * w, h, w) features whose location (y, x) is the unit vector e_{y w + x}."""
    return torch.eye(h * w, device=device).view(1, h * w, h, w)


def check_matchtrans_aligns_memory(device):
    h, w = 5, 6
    aligner = _aggregation(channels=h * w).to(device).forward_memory.aligner
    codes = _one_hot_codes(h, w, device)
    for seed in range(3):
        memory = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed)).to(device)
        # Identical frames whose affinity peaks at the same location: the identity.
        torch.testing.assert_close(aligner(codes, codes, memory), memory)
        # Frame t sees at (y, x) what frame t-1 had at (y, x + 1): the memory follows it.
        moved = torch.cat([codes[..., 1:], torch.zeros_like(codes[..., :1])], dim=-1)
        aligned = aligner(moved, codes, memory)
        torch.testing.assert_close(aligned[..., :-1], memory[..., 1:])


def test_matchtrans_aligns_memory_cpu():
    check_matchtrans_aligns_memory("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matchtrans_aligns_memory_cuda():
    check_matchtrans_aligns_memory("cuda")


# ---------------------------------------------------------------- STMNAggregation


def _window(seed, b=2, s=4, c=6, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, s, c, h, w, generator=g)


def _call(module, ref, support, offsets):
    """STMN on raw (B, C, H, W) / (B, S, C, H, W) backbone maps: encode every frame, aggregate."""
    encoded = module.encode(support.flatten(0, 1))
    return module(
        module.encode(ref),
        {k: v.unflatten(0, support.shape[:2]) for k, v in encoded.items()},
        offsets,
    )


class _OnRawMaps(nn.Module):
    """STMNAggregation with raw maps as inputs (for functional_call)."""

    def __init__(self, stmn):
        super().__init__()
        self.stmn = stmn

    def forward(self, ref, support, offsets):
        return _call(self.stmn, ref, support, offsets)


def _run(memory, frames):
    """One direction over (N, T, C, H, W) frames, each projected by its own cell."""
    projected = memory.cell.project(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
    return memory(frames, projected)


def test_output_is_forward_and_backward_memory_of_the_ordered_window():
    for matchtrans, cell in itertools.product([True, False], ["STMM", "ConvGRU"]):
        module = _aggregation(matchtrans=matchtrans, cell=cell)
        ref, support = _window(0)
        offsets = torch.tensor([[2, -1, -3, 1]] * 2)
        out = _call(module, ref, support, offsets)
        past = torch.stack([support[:, 2], support[:, 1], ref], dim=1)  # -3, -1, 0
        future = torch.stack([support[:, 0], support[:, 3], ref], dim=1)  # 2, 1, 0
        expected = torch.cat(
            [_run(module.forward_memory, past), _run(module.backward_memory, future)], 1
        )
        assert module.output_shape().channels == 8
        torch.testing.assert_close(out, expected, msg=f"{matchtrans} {cell}")


def test_encodings_are_the_features_and_each_directions_input_projection():
    for bidirectional in [True, False]:
        module = _aggregation(bidirectional=bidirectional)
        ref, _ = _window(7)
        encoded = module.encode(ref)
        names = ["feature", "forward_projection"] + ["backward_projection"] * bidirectional
        assert sorted(encoded) == sorted(names) and list(module.support_keys) == names
        torch.testing.assert_close(encoded["feature"], ref)
        # W_z F, W_r F, W F of each direction, computed once per frame.
        for name, direction in zip(names[1:], [module.forward_memory, module.backward_memory]):
            assert encoded[name].shape == (2, 3 * 4, 5, 6)
            torch.testing.assert_close(encoded[name], direction.cell.input_conv(ref))


def test_temporal_order_comes_from_the_offsets():
    module = _aggregation()
    ref, support = _window(1)
    offsets = torch.tensor([[-2, -1, 1, 2]] * 2)
    out = _call(module, ref, support, offsets)
    for perm in [[3, 1, 0, 2], [1, 0, 3, 2], [2, 3, 0, 1]]:
        torch.testing.assert_close(_call(module, ref, support[:, perm], offsets[:, perm]), out)
    # The same frames at other times give another memory (the check above can fail).
    assert not torch.allclose(_call(module, ref, support, offsets.flip(1)), out)


def test_repeated_offsets_and_the_reference_itself_are_visited_once():
    module = _aggregation()
    ref, support = _window(2, s=3)
    expected = _call(module, ref, support, torch.tensor([[-2, -1, 1]] * 2))
    clamped = torch.stack([support[:, 0], support[:, 0], support[:, 1], ref, support[:, 2]], 1)
    torch.testing.assert_close(
        _call(module, ref, clamped, torch.tensor([[-2, -2, -1, 0, 1]] * 2)), expected
    )
    # A DET image: every support frame is the image itself.
    alone = _call(
        module, ref, ref[:, None].expand(-1, 3, -1, -1, -1), torch.zeros(2, 3, dtype=torch.long)
    )
    torch.testing.assert_close(
        alone, _call(module, ref, support[:, :0], torch.zeros(2, 0, dtype=torch.long))
    )


def test_samples_with_different_windows_match_separate_calls():
    module = _aggregation()
    ref, support = _window(3, b=4, s=2)
    offsets = torch.tensor([[-1, 1], [0, 1], [1, -1], [0, 0]])
    out = _call(module, ref, support, offsets)
    # Samples 0 and 2 share a window, listed in another order: BN* sees them together.
    in_order = torch.stack([support[0], support[2].flip(0)])
    torch.testing.assert_close(out[[0, 2]], _call(module, ref[[0, 2]], in_order, offsets[[0, 0]]))
    for members in [[1], [3]]:
        torch.testing.assert_close(
            out[members], _call(module, ref[members], support[members], offsets[members])
        )


def test_forward_only_memory_ignores_the_future():
    module = _aggregation(bidirectional=False)
    ref, support = _window(4)
    offsets = torch.tensor([[-2, -1, 1, 2]] * 2)
    out = _call(module, ref, support, offsets)
    assert out.shape[1] == module.output_shape().channels == 4
    changed = support.clone()
    changed[:, 2:] += 1
    torch.testing.assert_close(_call(module, ref, changed, offsets), out)


def test_aggregation_gradcheck_float64():
    for matchtrans in [True, False]:
        # ConvGRU: BN*'s bound is a batch statistic held constant in backprop (as in the
        # authors' code), so only the smooth cell can be checked against finite differences.
        # The paper's MatchTrans: the authors' sends no gradient into the features.
        module = _aggregation(
            channels=2,
            memory=2,
            cell="ConvGRU",
            matchtrans=matchtrans,
            matchtrans_normalization="sum",
            memory_kernel_size=1,
        ).double()
        ref, support = (x.double().requires_grad_() for x in _window(5, b=1, s=2, c=2, h=3, w=3))
        offsets = torch.tensor([[-1, 1]])
        names = [
            "stmn.forward_memory.cell.gate_conv.weight",
            "stmn.backward_memory.cell.candidate_conv.weight",
        ]
        raw = _OnRawMaps(module)
        params = {k: v.detach().clone().requires_grad_() for k, v in raw.named_parameters()}

        def run(r, s, *weights):
            overrides = dict(params, **dict(zip(names, weights)))
            return torch.func.functional_call(raw, overrides, (r, s, offsets))

        inputs = (ref, support, *(params[k] for k in names))
        assert torch.autograd.gradcheck(run, inputs), matchtrans


def test_bad_inputs_name_what_is_wrong():
    module = _aggregation()
    ref, support = _window(6)
    with pytest.raises(ValueError, match="6-channel"):
        _call(module, ref[:, :5], support, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="offsets"):
        _call(module, ref, support, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="MODEL.STMN.CELL"):
        _aggregation(cell="LSTM")


# ---------------------------------------------------------------- config and model


@pytest.mark.parametrize("config_file", STMN_CONFIGS)
def test_configs_build_stmn_with_heads_on_both_memories(config_file):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    module = model.temporal_aggregation
    assert isinstance(module, STMNAggregation)
    memory = cfg.MODEL.STMN.MEMORY_CHANNELS
    assert module.output_shape().channels == 2 * memory
    assert model.proposal_generator.rpn_head.objectness_logits.in_channels == 2 * memory
    assert module.forward_memory.aligner is not None
    # The paper's k = 2, or 0 on the synthetic configs' 8-cell maps (the same share of the map).
    assert module.forward_memory.aligner.k == cfg.MODEL.STMN.MATCHTRANS.K
    assert cfg.MODEL.STMN.MATCHTRANS.K == (0 if "synthetic" in config_file else 2)


def test_config_switches_pick_the_ablations(tiny_cfg):
    model = seeded_model(stmn_cfg(tiny_cfg, matchtrans=False, CELL="ConvGRU", BIDIRECTIONAL=False))
    module = model.temporal_aggregation
    assert type(module.forward_memory.cell) is ConvGRUCell
    assert module.forward_memory.aligner is None and module.backward_memory is None
    assert model.proposal_generator.rpn_head.conv.in_channels == 8


def test_backbone_runs_once_per_test_frame(tiny_cfg):
    model = seeded_model(stmn_cfg(tiny_cfg, window=(3, 3)))
    calls = count_backbone_calls(model)
    done = list(run_on_video(model, random_video(8, seed=1)))
    assert calls == [1] * 8
    assert [meta["frame_idx"] for meta, _ in done] == list(range(8))


def test_each_test_frame_is_projected_once_per_direction(tiny_cfg):
    model = seeded_model(stmn_cfg(tiny_cfg, window=(3, 3)))
    module = model.temporal_aggregation
    calls = []
    for direction in (module.forward_memory, module.backward_memory):
        project = direction.cell.project
        direction.cell.project = lambda x, project=project: calls.append(len(x)) or project(x)
    list(run_on_video(model, random_video(8, seed=1)))
    # Every frame is in up to 7 windows, but W * F is computed when it enters the cache.
    assert calls == [1] * 16


def test_memory_does_not_leak_into_the_next_video(tiny_cfg):
    model = seeded_model(stmn_cfg(tiny_cfg))
    first = [o["instances"] for o in model(random_video(5, seed=2))]
    model(random_video(6, seed=3))
    again = [o["instances"] for o in model(random_video(5, seed=2))]
    assert sum(len(x) for x in first) > 0
    for a, b in zip(first, again):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)


def test_training_step_reaches_every_memory_weight(tiny_cfg):
    cfg = stmn_cfg(tiny_cfg)
    model = seeded_model(cfg).train()
    frames = random_video(6, seed=4)
    batch = []
    for i, (ref, offsets) in enumerate([(frames[2], [-2, -1, 1, 2]), (frames[0], [0, 0, 1, 2])]):
        instances = Instances((64, 80))
        instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 40.0, 50.0]]))
        instances.gt_classes = torch.tensor([i])
        t = ref["frame_idx"]
        support = [frames[t + o]["image"] for o in offsets]
        batch.append(
            dict(ref, instances=instances, support_images=support, support_offsets=offsets)
        )
    # The residual gate half open (half-way through its schedule): gradients reach the cells.
    with EventStorage(start_iter=cfg.MODEL.VIDEO.GATE.OPEN_ITERS // 2):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.temporal_aggregation.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- static start


def test_single_frame_start_is_relu_of_the_feature_conv():
    torch.manual_seed(0)
    module = STMNSingleFrameAggregation(
        input_shape=ShapeSpec(channels=6, stride=16), memory_channels=4
    )
    ref, support = _window(7)
    out = module({"feature": ref}, {}, torch.zeros(2, 4, dtype=torch.long))
    torch.testing.assert_close(out, F.relu(module.feature_conv(ref)))
    assert module.output_shape().channels == 4


# ---------------------------------------------------------------- end to end


@pytest.mark.usefixtures("synthetic_datasets")
def test_synthetic_config_trains_and_evaluates_on_cpu(tmp_path):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/stmn.yaml")
    trainer = brief_trainer(cfg, tmp_path, iterations=3)
    trainer.train()
    assert len(trained_losses(trainer)) == 3
    assert isinstance(trainer.model.temporal_aggregation, STMNAggregation)
    assert 0.0 <= evaluate_on_synthetic(cfg, trainer.model)["mAP"] <= 100.0
