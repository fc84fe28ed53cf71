"""
Properties of the streaming core (VideoDetector) on toy meta-architectures whose payloads
record what they were computed from: feature policy, cache bounds, support plans, state.
"""

import pytest
import torch
from detectron2.structures import Boxes, ImageList, Instances

from vod_d2.engine import run_on_video
from vod_d2.modeling import (
    FrameInfo,
    GlobalSupport,
    NoSupport,
    TemporalModule,
    VideoDetector,
    WindowSupport,
)
from vod_d2.modeling.frames import FULL, LIGHT, spread_indices


class _Memory(TemporalModule):
    """Recurrent state: the sum of the key frames' values so far."""

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self):
        self.total = 0.0


class _Toy(VideoDetector):
    """
    Frame ``t``'s image is the constant ``t`` (plus the video's offset). Its payload holds a
    large target-only entry and a small support entry; detection records which frames it read.
    Key frames (every ``interval``-th) get the "heavy" path, the others the "light" one.
    """

    support_keys = ("value",)

    def __init__(self, policy, interval=1, memory=False):
        super().__init__(support_policy=policy)
        self.interval = interval
        self.memory = _Memory() if memory else None
        self.calls = {FULL: [], LIGHT: []}
        self.read = []

    def frame_kind(self, index, video_length):
        return FULL if index % self.interval == 0 else LIGHT

    def preprocess_image(self, batched_inputs):
        return ImageList.from_tensors([x["image"].float() for x in batched_inputs])

    def encode(self, images, frames):
        for f in frames:
            self.calls[f.kind].append(f.index)
        value = images.tensor.mean(dim=(1, 2, 3))
        if self.memory is not None:
            self.memory.total += float(value.sum())
            value = value * 0 + self.memory.total
        return {"value": value, "target_only": images.tensor.clone()}

    def detect(self, target, support, frame, support_frames, images):
        assert images.tensor.shape[0] == 1 and tuple(images.tensor.shape[-2:]) == (4, 6)
        self.read.append((frame.index, [s.index for s in support_frames]))
        values = [float(target["value"])] + [float(p["value"]) for p in support]
        instances = Instances(images.image_sizes[0])
        instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]] * len(values)))
        instances.scores = torch.tensor(values)
        instances.pred_classes = torch.zeros(len(values), dtype=torch.int64)
        return instances


def _video(num_frames, start=0):
    return [
        {"image": torch.full((3, 4, 6), float(start + t)), "frame_idx": t, "video_id": start}
        for t in range(num_frames)
    ]


def _run(model, video, length=None, **kwargs):
    return list(run_on_video(model, video, length, **kwargs))


# ---------------------------------------------------------------- feature policy


def test_key_frame_policy_runs_the_heavy_path_on_one_frame_in_ten():
    model = _Toy(NoSupport(), interval=10)
    done = _run(model, _video(35))
    assert model.calls[FULL] == [0, 10, 20, 30]
    assert model.calls[LIGHT] == [t for t in range(35) if t % 10]
    assert [meta["frame_idx"] for meta, _ in done] == list(range(35))


def test_window_policy_computes_every_payload_once_whatever_the_window():
    for offsets in [(), (-1, 1), (-13, -6, 6, 13), (2, 4)]:
        model = _Toy(WindowSupport(offsets))
        done = _run(model, _video(20))
        assert model.calls[FULL] == list(range(20)), offsets
        assert [meta["frame_idx"] for meta, _ in done] == list(range(20)), offsets


# ---------------------------------------------------------------- windows and the cache


def test_window_reads_clamped_neighbours_and_waits_for_the_look_ahead():
    model = _Toy(WindowSupport((-2, -1, 1, 2)))
    model.reset()
    ready = [[m["frame_idx"] for m, _ in model.step(f)] for f in _video(5)]
    assert ready == [[], [], [0], [1], [2]]
    assert [m["frame_idx"] for m, _ in model.flush()] == [3, 4]
    # Borders repeat the first and last frame.
    assert model.read == [
        (0, [0, 0, 1, 2]),
        (1, [0, 0, 2, 3]),
        (2, [0, 1, 3, 4]),
        (3, [1, 2, 4, 4]),
        (4, [2, 3, 4, 4]),
    ]


def test_known_length_emits_the_last_frames_without_waiting_for_flush():
    model = _Toy(WindowSupport((1, 2)))
    model.reset(video_length=4)
    ready = [[m["frame_idx"] for m, _ in model.step(f)] for f in _video(4)]
    assert ready == [[], [], [0], [1, 2, 3]]
    assert model.flush() == []


def test_cache_holds_what_the_window_declares_and_only_support_entries_of_past_frames():
    for before, after in [(0, 0), (3, 0), (0, 3), (2, 5), (13, 13)]:
        offsets = [o for o in range(-before, after + 1) if o]
        model = _Toy(WindowSupport(offsets))
        model.reset()
        for frame in _video(40):
            model.step(frame)
            video = model._video
            # A frame keeps its whole payload (2 tensors) and image until it is detected, then
            # only its "value" while a later window may read it: after + 1 pending frames and
            # ``before`` past ones (the frame just detected is the newest of those).
            pending = len(video.pending)
            assert pending <= after + 1, (before, after)
            assert model.num_cached_tensors() <= 3 * pending + before, (before, after)
            for i, payload in video.cache.items():
                assert set(payload) == (
                    {"value", "target_only"} if i in video.pending else {"value"}
                )
        model.flush()


def test_pending_frames_hold_their_input_image_not_a_float_copy():
    # A look-ahead of 50 frames at 600x1000 holds 90 MB of uint8 inputs, not 360 MB of floats.
    model = _Toy(WindowSupport((-1, 4)))
    model.reset()
    video = [dict(f, image=f["image"].to(torch.uint8)) for f in _video(12)]
    for frame in video:
        model.step(frame)
        for index, pending in model._video.pending.items():
            assert pending.image is video[index]["image"]
    assert len(model.flush()) == 4


def test_cache_stays_bounded_on_a_long_video():
    model = _Toy(WindowSupport((-3, 3)))
    model.reset()
    most = 0
    for frame in _video(300):
        model.step(frame)
        most = max(most, model.num_cached_tensors())
    assert most <= 3 * 4 + 3


# ---------------------------------------------------------------- state


def test_a_videos_recurrent_state_never_reaches_the_next_video():
    model = _Toy(NoSupport(), memory=True)
    alone = [o["instances"].scores for _, o in _run(model, _video(6, start=100))]
    _run(model, _video(9, start=7))
    again = [o["instances"].scores for _, o in _run(model, _video(6, start=100))]
    for a, b in zip(alone, again):
        assert torch.equal(a, b)
    # The memory is real: it accumulates within the video.
    assert alone[0].item() < alone[1].item() < alone[5].item()


def test_a_stateful_model_is_not_frame_independent():
    assert _Toy(NoSupport()).frame_independent
    assert not _Toy(NoSupport(), memory=True).frame_independent
    assert not _Toy(WindowSupport((-1,))).frame_independent


def test_video_models_refuse_the_single_image_contract():
    model = _Toy(WindowSupport((-1, 1)))
    with pytest.raises(ValueError, match="detected_instances"):
        model.inference(_video(3), do_postprocess=False)


# ---------------------------------------------------------------- whole-video support


def test_whole_video_support_spreads_over_the_video_and_is_prefetched():
    for length in [1, 5, 6, 40, 121]:
        model = _Toy(GlobalSupport(6, seed=3))
        video = _video(length)
        model.reset(length)
        wanted = model.prefetch_indices()
        assert wanted == sorted(set(wanted)) and len(wanted) == min(6, length), length
        # One frame in each sixth of the video.
        if length >= 6:
            assert [i * 6 // length for i in wanted] == list(range(6)), length
        model.calls[FULL].clear()
        model.read.clear()
        _run(model, video, length, frame_at=video.__getitem__)
        assert all(read == wanted for _, read in model.read), length
        # Prefetched frames are not encoded again when the stream reaches them.
        assert sorted(model.calls[FULL]) == list(range(length)), length


def test_whole_video_support_is_deterministic_per_seed_and_differs_across_seeds():
    draws = {seed: GlobalSupport(6, seed).plan(120).prefetch() for seed in range(4)}
    assert draws[0] == GlobalSupport(6, 0).plan(120).prefetch()
    assert len({tuple(d) for d in draws.values()}) > 1


def test_streaming_a_whole_video_model_without_priming_is_refused():
    model = _Toy(GlobalSupport(2))
    with pytest.raises(ValueError, match="frame_at"):
        _run(model, _video(10), 10)
    model.reset(10)
    with pytest.raises(RuntimeError, match="primed"):
        model.step(_video(1)[0])


def test_unknown_length_reads_only_past_frames_with_a_bounded_cache():
    model = _Toy(GlobalSupport(3, seed=1))
    model.reset(None)
    most = 0
    for frame in _video(200):
        model.step(frame)
        most = max(most, len(model._video.cache))
    for index, read in model.read:
        assert all(i < index for i in read) and len(read) == min(3, index), index
    # Reservoir sampling: early and late frames both make it into the sample.
    late = [read for index, read in model.read if index > 150]
    assert any(min(r) < 50 for r in late) and any(max(r) > 100 for r in late)
    assert most <= 3 + 1


def test_spread_indices_covers_every_part_of_the_video():
    rng = __import__("numpy").random.default_rng(0)
    for length in [7, 10, 61, 1000]:
        for num in [1, 2, 6]:
            indices = spread_indices(num, length, rng)
            bounds = [(k * length // num, (k + 1) * length // num + 1) for k in range(num)]
            assert all(lo <= i < hi for i, (lo, hi) in zip(indices, bounds)), (length, num)


def test_frame_info_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="kind"):
        FrameInfo(0, None, "medium")
