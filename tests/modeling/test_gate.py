"""The residual gates of MODEL.VIDEO.GATE: each starts as the reference, and where it goes."""

import pytest
import torch
from detectron2.utils.events import EventStorage

from vod_d2.modeling.temporal.gate import (
    GateSpec,
    PositionGate,
    ResidualGate,
    ScheduledGate,
    gate_opening,
    maybe_gate,
)


def _maps(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def _train_forward(gate, iteration, reference, aggregated):
    gate.train()
    with EventStorage(start_iter=iteration):
        return gate(reference, aggregated)


@pytest.mark.parametrize(
    "iteration, expected", [(0, 0.0), (100, 0.25), (200, 0.5), (399, 399 / 400), (400, 1.0)]
)
def test_scheduled_gate_follows_the_iteration(iteration, expected):
    gate = ScheduledGate(400)
    reference, aggregated = _maps(2, 3, 4, 5)
    out = _train_forward(gate, iteration, reference, aggregated)
    assert gate.opening() == pytest.approx(expected)
    torch.testing.assert_close(out, reference + expected * (aggregated - reference))


def test_scheduled_gate_is_exact_at_both_ends_and_keeps_its_opening_for_inference():
    gate = ScheduledGate(400)
    reference, aggregated = _maps(2, 3, 4, 5)
    assert torch.equal(_train_forward(gate, 0, reference, aggregated), reference)
    assert torch.equal(_train_forward(gate, 10_000, reference, aggregated), aggregated)
    gate.eval()
    assert torch.equal(gate(reference, aggregated), aggregated)  # no storage needed
    # The opening travels with the checkpoint; a fresh gate (a single-frame start) is closed.
    fresh = ScheduledGate(400).eval()
    assert torch.equal(fresh(reference, aggregated), reference)
    fresh.load_state_dict(gate.state_dict())
    assert torch.equal(fresh(reference, aggregated), aggregated)


def test_scheduled_gate_passes_gradient_to_the_module_once_open():
    gate = ScheduledGate(4)
    reference, aggregated = (x.requires_grad_() for x in _maps(1, 2, 3, 3))
    _train_forward(gate, 2, reference, aggregated).sum().backward()
    assert torch.allclose(aggregated.grad, torch.full_like(aggregated, 0.5))
    assert torch.allclose(reference.grad, torch.full_like(reference, 0.5))


def test_position_gate_starts_closed_and_learns_a_value_per_position():
    gate = PositionGate(3)
    reference, aggregated = _maps(2, 4, 3, 5, 6)  # (B, T, C, H, W) as STMN gates it
    out = _train_forward(gate, 0, reference, aggregated)
    assert torch.equal(out, reference)
    out.pow(2).sum().backward()
    assert gate.conv.weight.grad.abs().sum() > 0  # it can open
    with torch.no_grad():
        gate.conv.bias.fill_(0.5)
        gate.conv.weight[0, 3:].fill_(1.0)  # g depends on the aggregated map
    g = gate.gate(reference, aggregated)
    assert g.shape == (2, 4, 1, 5, 6)
    assert g.std() > 0
    torch.testing.assert_close(
        gate(reference, aggregated), reference + g * (aggregated - reference)
    )


def test_maybe_gate_builds_the_configured_kind_or_none():
    assert maybe_gate(False, 8, GateSpec("position")) is None
    assert isinstance(maybe_gate(True, 8), ScheduledGate)  # the default
    assert isinstance(maybe_gate(True, 8, GateSpec("channel")), ResidualGate)
    assert isinstance(maybe_gate(True, 8, GateSpec("scheduled", 10)), ScheduledGate)
    assert isinstance(maybe_gate(True, 8, GateSpec("position")), PositionGate)
    with pytest.raises(ValueError, match="OPEN_ITERS"):
        ScheduledGate(0)


def test_a_module_built_without_a_config_gets_the_configs_default_gate():
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    assert GateSpec() == GateSpec.from_config(cfg) == GateSpec("scheduled", 400)


def test_scheduled_gate_trained_outside_detectron2s_loop_says_what_it_needs():
    gate = ScheduledGate(400).train()
    with pytest.raises(RuntimeError, match="EventStorage.*GATE.KIND 'channel'"):
        gate(*_maps(1, 2, 3, 3))


def test_gate_spec_from_config_names_the_key_of_an_unknown_kind():
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.VIDEO.GATE.KIND = "spatial"
    with pytest.raises(ValueError, match="MODEL.VIDEO.GATE.KIND"):
        GateSpec.from_config(cfg)


def test_gate_opening_names_every_gate():
    model = torch.nn.ModuleDict(
        {"a": ResidualGate(4), "b": torch.nn.ModuleDict({"c": ScheduledGate(10)})}
    )
    with torch.no_grad():
        model["a"].gamma.fill_(0.25)
    _train_forward(model["b"]["c"], 5, *_maps(1, 1, 2, 2))
    assert gate_opening(model) == {"a": 0.25, "b.c": 0.5}


def test_scheduled_gate_used_twice_in_one_forward_still_backpropagates():
    """STMN gates every frame of its training sequence with the same gate, in one graph."""
    gate = ScheduledGate(4).train()
    reference, aggregated = (x.requires_grad_() for x in _maps(1, 2, 3, 3))
    with EventStorage(start_iter=2):
        total = gate(reference, aggregated).sum() + gate(reference, 2 * aggregated).sum()
    total.backward()
    assert torch.allclose(aggregated.grad, torch.full_like(aggregated, 1.5))
