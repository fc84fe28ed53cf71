"""The paired, video-level bootstrap of mAP differences (vod_d2.evaluation.bootstrap)."""

import numpy as np
import pytest

from vod_d2.evaluation import FrameDetections, FrameGroundTruth, paired_bootstrap

BOX = [0, 0, 39, 39]


def _gt(num_videos):
    """One frame per video, one class-0 box in each."""
    return FrameGroundTruth(
        image_ids=np.arange(num_videos), heights=np.full(num_videos, 100),
        widths=np.full(num_videos, 100), frame_video=np.arange(num_videos),
        frame_index=np.zeros(num_videos), box_frame=np.arange(num_videos),
        boxes=np.tile(BOX, (num_videos, 1)), classes=np.zeros(num_videos),
        track_ids=np.zeros(num_videos),
    )  # fmt: skip


def _found(frames):
    """Detections of the boxes of ``frames``, each found at score 0.9."""
    return FrameDetections(
        frame=list(frames), boxes=np.tile(BOX, (len(frames), 1)), scores=[0.9] * len(frames),
        classes=[0] * len(frames),
    )  # fmt: skip


def test_a_hand_made_pairing():
    # Two videos. The method finds both boxes (AP 100); the baseline only video 0's (AP 50).
    # A sample draws two videos: {0, 0} (p 1/4): 100 - 100 = 0; {1, 1} (1/4): 100 - 0 = 100;
    # {0, 1} (1/2): 100 - 50 = 50. So the 95% interval is [0, 100] and its mean 50.
    result = paired_bootstrap(_gt(2), [_found([0, 1])], [_found([0])], 1, samples=2000)["all"]
    assert result.method == [100.0] and result.baseline == [50.0] and result.mean == 50.0
    assert (result.low, result.high) == (0.0, 100.0)
    # Every sample is one of the three outcomes, in about their proportions.
    again = paired_bootstrap(_gt(2), [_found([0, 1])], [_found([0])], 1, samples=2000, seed=0)
    assert again["all"] == result  # seeded
    narrow = paired_bootstrap(
        _gt(2), [_found([0, 1])], [_found([0])], 1, samples=2000, confidence=0.4
    )["all"]
    assert (narrow.low, narrow.high) == (50.0, 50.0)


def test_every_run_of_both_methods_sees_the_same_video_draws():
    # A detector that finds half of the boxes has an mAP that varies from sample to sample
    # (against one that finds all: an interval tens of points wide), but against itself the
    # difference is 0 on every sample: the draws are shared, as the pairing needs.
    gt = _gt(4)
    good, half = _found([0, 1, 2, 3]), _found([0, 1])
    varied = paired_bootstrap(gt, [half], [good], 1, samples=200)["all"]
    assert varied.mean == -50.0 and varied.high - varied.low > 40
    result = paired_bootstrap(gt, [good, half], [good, half], 1, samples=200)["all"]
    assert result.mean == 0.0 and (result.low, result.high) == (0.0, 0.0)


def test_more_videos_give_a_narrower_interval():
    # The method finds every box, the baseline every other one: the difference is 50 points,
    # and its interval shrinks as videos are added.
    widths = []
    for num_videos in (4, 64):
        result = paired_bootstrap(
            _gt(num_videos), [_found(range(num_videos))], [_found(range(0, num_videos, 2))], 1,
            samples=500,
        )["all"]  # fmt: skip
        assert result.mean == pytest.approx(50.0) and result.low <= 50.0 <= result.high
        widths.append(result.high - result.low)
    assert widths[1] < widths[0] / 2


def test_mismatched_runs_are_refused():
    with pytest.raises(ValueError, match="as many baseline runs"):
        paired_bootstrap(_gt(2), [_found([0])], [], 1)
