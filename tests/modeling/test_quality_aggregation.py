import pytest
import torch

from vod_d2.modeling.temporal.quality_aggregation import QualityAwareAggregation


def _maps(k, seed=0, shape=(2, 6, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(k)]


def test_weights_sum_to_one_at_every_position():
    torch.manual_seed(0)
    unit = QualityAwareAggregation(6)
    for k in (1, 2, 3):
        weights = unit.weights(_maps(k, seed=k))
        assert weights.shape == (k, 2, 1, 5, 7)
        torch.testing.assert_close(weights.sum(dim=0), torch.ones(2, 1, 5, 7))
        assert (weights > 0).all()


def test_fused_map_is_the_weighted_sum_of_eq3():
    torch.manual_seed(1)
    unit = QualityAwareAggregation(6)
    maps = _maps(2, seed=3)
    fused, weights = unit(maps, return_weights=True)
    scores = torch.stack([unit.quality_net(m) for m in maps])
    torch.testing.assert_close(weights, scores.softmax(dim=0))
    torch.testing.assert_close(fused, weights[0] * maps[0] + weights[1] * maps[1])


def test_identical_inputs_give_the_input_and_fixed_weights_give_the_mean():
    torch.manual_seed(2)
    (a,) = _maps(1, seed=4)
    torch.testing.assert_close(QualityAwareAggregation(6)([a, a.clone()]), a)
    a, b = _maps(2, seed=5)
    torch.testing.assert_close(QualityAwareAggregation(6, quality=False)([a, b]), (a + b) / 2)


def test_mismatched_maps_are_refused():
    unit = QualityAwareAggregation(6)
    with pytest.raises(ValueError, match="one shape"):
        unit([torch.zeros(1, 6, 4, 4), torch.zeros(1, 6, 4, 5)])
    with pytest.raises(ValueError, match="at least one"):
        unit([])
