"""
SharedWeightModules: modules that compute with another module's weights and keep their own
state (one temporal aggregation per FPN level, one set of weights).
"""

from functools import reduce

import pytest
import torch
from torch import nn

from vod_d2.modeling.temporal.levels import SharedWeightModules


class _Net(nn.Module):
    """A conv and a BatchNorm (parameters and buffers), and an attribute standing for state."""

    def __init__(self, channels=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.state = []

    def forward(self, x):
        self.state.append(x.shape)
        return self.norm(self.conv(x))


def _model():
    """The source registered before the modules that share its weights, as in VideoRCNN."""
    model = nn.Module()
    model.first = _Net(seed=0)
    model.levels = SharedWeightModules(model.first, {"p3": _Net(seed=1), "p4": _Net(seed=2)}, "p2")
    return model


def _tensors(module, like):
    """``module``'s tensors of the names of ``like``'s parameters and buffers."""
    names = [name for name, _ in (*like.named_parameters(), *like.named_buffers())]
    assert len(names) == 7  # conv weight, bias; norm weight, bias, running mean, var, count
    return [reduce(getattr, name.split("."), module) for name in names]


def _check_shared(model):
    for level in ("p3", "p4"):
        for own, source in zip(
            _tensors(model.levels[level], model.first), _tensors(model.first, model.first)
        ):
            assert own is source, level


def test_every_module_computes_with_the_sources_weights_and_keeps_its_own_state():
    model = _model()
    _check_shared(model)
    x = torch.randn(2, 4, 5, 6)
    model.eval()
    expected = model.first(x)
    for level in ("p3", "p4"):
        assert torch.equal(model.levels[level](x), expected), level
    model.levels["p3"](x[:1])
    assert len(model.first.state) == 1 and len(model.levels["p4"].state) == 1
    assert len(model.levels["p3"].state) == 2


def test_the_weights_are_the_models_once():
    model = _model()
    assert [p for p in model.parameters()] == [p for p in model.first.parameters()]
    assert [b for b in model.buffers()] == [b for b in model.first.buffers()]
    assert list(model.state_dict()) == [f"first.{k}" for k in model.first.state_dict()]


def test_a_training_step_moves_every_level_and_running_statistics_are_shared():
    model = _model().train()
    x = torch.randn(2, 4, 5, 6)
    model.levels["p4"](x).square().sum().backward()
    assert model.first.conv.weight.grad is not None
    assert int(model.first.norm.num_batches_tracked) == 1
    assert int(model.levels["p3"].norm.num_batches_tracked) == 1


def test_a_loaded_state_dict_reaches_every_module_and_reports_missing_weights_once():
    model = _model()
    other = _model()
    with torch.no_grad():
        for tensor in _tensors(other.first, other.first):
            tensor.add_(1)
    incompatible = model.load_state_dict(other.state_dict())  # strict
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for level in ("p3", "p4"):
        for own, theirs in zip(
            _tensors(model.levels[level], model.first), _tensors(other.first, other.first)
        ):
            assert torch.equal(own, theirs), level
    # Missing from a checkpoint: named once (BatchNorm fills in num_batches_tracked itself).
    incompatible = model.load_state_dict({}, strict=False)
    expected = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(incompatible.missing_keys) == sorted(expected)


def test_weights_stay_shared_through_conversions():
    model = _model().double()
    _check_shared(model)
    assert model.levels["p3"].norm.running_mean.dtype == torch.float64
    # Converted once, not once per module that holds them (the conversions of .to(), .half()
    # ... are Module._apply(fn); this fn shows how many times it ran).
    before = model.first.conv.weight.detach().clone()
    model._apply(lambda t: t * 2)
    _check_shared(model)
    assert torch.equal(model.levels["p3"].conv.weight, 2 * before)


def test_modules_of_another_width_are_refused_with_their_name():
    with pytest.raises(ValueError, match=r"the _Net of 'p3' has conv.weight of shape \(8, 8"):
        SharedWeightModules(_Net(4), {"p3": _Net(8)}, "p2")
