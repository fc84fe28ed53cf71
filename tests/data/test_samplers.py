import itertools
from unittest import mock

import numpy as np

from vod_d2.data import MixedVideoTrainingSampler, VideoInferenceSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_training_sampler_is_deterministic_per_seed():
    is_det = [False] * 30 + [True] * 10
    for ratio in (-1.0, 0.5):
        a = _take(MixedVideoTrainingSampler(is_det, ratio, seed=3), 500)
        b = _take(MixedVideoTrainingSampler(is_det, ratio, seed=3), 500)
        c = _take(MixedVideoTrainingSampler(is_det, ratio, seed=4), 500)
        assert a == b and a != c, ratio


def test_training_sampler_mixes_det_with_the_given_ratio():
    is_det = np.array([False] * 90 + [True] * 10)
    for ratio in (0.0, 0.25, 0.5, 1.0):
        drawn = np.array(_take(MixedVideoTrainingSampler(is_det, ratio, seed=0), 8000))
        assert abs(is_det[drawn].mean() - ratio) < 0.03, ratio


def test_training_sampler_negative_ratio_is_an_epoch_permutation():
    drawn = _take(MixedVideoTrainingSampler([False] * 7 + [True] * 3, -1.0, seed=0), 20)
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))


def test_inference_sampler_shards_whole_videos_and_covers_every_frame():
    video_ids = ["a"] * 5 + ["b"] * 2 + ["c"] * 7 + ["d"] * 1 + ["e"] * 4
    shards = []
    for rank in range(3):
        with (
            mock.patch("vod_d2.data.samplers.comm.get_rank", return_value=rank),
            mock.patch("vod_d2.data.samplers.comm.get_world_size", return_value=3),
        ):
            shards.append(list(VideoInferenceSampler(video_ids)))
    assert sorted(i for s in shards for i in s) == list(range(len(video_ids)))
    for shard in shards:
        assert shard == sorted(shard)
        for vid in {video_ids[i] for i in shard}:
            assert [i for i in shard if video_ids[i] == vid] == [
                i for i, v in enumerate(video_ids) if v == vid
            ], vid
    assert max(len(s) for s in shards) <= 7
