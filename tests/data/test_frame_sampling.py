import numpy as np
import pytest

from vod_d2.data import FrameSampler


def _draws(sampler, frame_idx, length, n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [sampler(frame_idx, length, rng) for _ in range(n)]


def test_before_after_draws_one_on_each_side_within_range():
    sampler = FrameSampler("before_after", num_support=2, range=5)
    for offsets in _draws(sampler, 20, 100):
        assert len(offsets) == 2
        assert -5 <= offsets[0] <= -1 and 1 <= offsets[1] <= 5


def test_offsets_are_clamped_into_the_video():
    for rule, kwargs in [
        ("before_after", dict(num_support=2, range=9)),
        ("uniform_range", dict(num_support=4, range=9)),
        ("fixed", dict(offsets=(-30, -10, 10, 30))),
        ("global", dict(num_support=3)),
        ("key_frame", dict(key_ranges=(-10, -5, -5, 5))),
    ]:
        sampler = FrameSampler(rule, **kwargs)
        for t in (0, 3, 11):
            for offsets in _draws(sampler, t, 12, n=50):
                assert len(offsets) == sampler.length, rule
                assert all(0 <= t + o < 12 for o in offsets), (rule, t, offsets)


def test_one_frame_video_uses_itself_as_support():
    for rule, kwargs in [("before_after", dict(num_support=2)), ("fixed", dict(offsets=(-1, 1)))]:
        assert _draws(FrameSampler(rule, **kwargs), 0, 1, n=5) == [[0, 0]] * 5


def test_key_frame_triplets_draw_each_key_uniformly_in_its_range():
    sampler = FrameSampler("key_frame", key_ranges=(-10, -6, -5, 4))
    draws = _draws(sampler, 50, 200, n=2000)
    olds, news = [o for o, _ in draws], [n for _, n in draws]
    assert set(olds) == set(range(-10, -5)) and set(news) == set(range(-5, 5))
    # Drawn independently: every (old, new) pair occurs.
    assert len(set(map(tuple, draws))) == 5 * 10
    with pytest.raises(ValueError, match="TRAIN_KEY_RANGES"):
        FrameSampler("key_frame", key_ranges=(-5, -10, 0, 0))


def test_same_seed_gives_same_offsets():
    sampler = FrameSampler("uniform_range", num_support=3, range=9)
    assert _draws(sampler, 30, 60, seed=7) == _draws(sampler, 30, 60, seed=7)
    assert _draws(sampler, 30, 60, seed=7) != _draws(sampler, 30, 60, seed=8)


@pytest.mark.parametrize(
    "rule, kwargs, match",
    [
        ("nearest", {}, "TRAIN_SAMPLING='nearest'"),
        ("before_after", dict(num_support=0), "TRAIN_NUM_SUPPORT"),
        ("fixed", dict(offsets=(0, 1)), "TRAIN_OFFSETS"),
    ],
)
def test_bad_rules_name_the_config_key(rule, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrameSampler(rule, **kwargs)
