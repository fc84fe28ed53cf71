from pathlib import Path

import numpy as np
import pytest
import torch
from _testing import count_backbone_calls

from vod_d2.data import VideoDatasetMapper
from vod_d2.engine import VideoPredictor, VideoReader, run_on_video
from vod_d2.postprocessing import seq_nms_instances

cv2 = pytest.importorskip("cv2")

REAL_VIDEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "street_1080p.mp4"
SIZE = (72, 96)  # (H, W) of the generated videos; the test resize makes them 64 x 85


def _frames(num_frames, seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than noise, so that the mp4 round trip keeps the frames recognisable.
    small = rng.integers(0, 256, (num_frames, size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return [cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in small]


def _write_video(path, frames, fps=5):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE[::-1])
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _predictor(cfg, aggregation="WindowMeanAggregation", window=(2, 2), **options):
    cfg.MODEL.VIDEO.AGGREGATION = aggregation
    cfg.MODEL.VIDEO.TEST_WINDOW = window
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list([x for kv in options.items() for x in kv])
    torch.manual_seed(0)
    return VideoPredictor(cfg.clone())


MODELS = {
    "offline": ("WindowMeanAggregation", (2, 2)),
    "online": ("WindowMeanAggregation", (3, 0)),
    "single_frame": ("SingleFrameAggregation", (0, 0)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_video_file_gives_one_result_per_frame_in_order(tiny_cfg, tmp_path, kind):
    predictor = _predictor(tiny_cfg, *MODELS[kind])
    calls = count_backbone_calls(predictor.model)
    video = _write_video(tmp_path / "clip.mp4", _frames(8))
    results = list(predictor.run_video(video))
    assert calls == [1] * 8
    assert [t for t, _ in results] == list(range(8))
    for t, instances in results:
        assert instances.image_size == SIZE, t
        boxes = instances.pred_boxes.tensor
        assert (boxes[:, 2:] <= torch.tensor(SIZE[::-1]) + 1e-3).all(), t


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_results_stream_out_with_the_window_look_ahead_and_bounded_memory(tiny_cfg, kind):
    aggregation, (before, after) = MODELS[kind]
    predictor = _predictor(tiny_cfg, aggregation, (before, after))
    num_frames = 8
    predictor.reset()
    for t, frame in enumerate(_frames(num_frames, seed=1)):
        ready = [i for i, _ in predictor.put(frame)]
        # Frame t - after is complete once frame t is in: nothing waits longer than that.
        assert ready == ([t - after] if t >= after else []), t
        # One map per frame of the window, and the images of the frames still pending.
        assert predictor.model.num_cached_tensors() <= (before + after + 1) + (after + 1), t
    assert [i for i, _ in predictor.flush()] == list(range(num_frames - after, num_frames))


def test_frames_are_resized_once_and_converted_to_the_model_format(tiny_cfg):
    for input_format, expected in [("BGR", [10, 100, 200]), ("RGB", [200, 100, 10])]:
        predictor = _predictor(tiny_cfg, "SingleFrameAggregation", (0, 0))
        predictor.input_format = input_format
        seen = []
        step = predictor.model.step
        predictor.model.step = lambda frame: seen.append(frame) or step(frame)
        frame = np.empty((*SIZE, 3), np.uint8)
        frame[:] = [10, 100, 200]  # B, G, R
        list(predictor.run_video([frame, frame]))
        for d in seen:
            assert d["image"].shape == (3, 64, 85), input_format
            assert (d["height"], d["width"]) == SIZE, input_format
            assert d["image"][:, 30, 40].tolist() == expected, input_format
        assert [d["frame_idx"] for d in seen] == [0, 1], input_format


def test_predictor_matches_the_evaluation_path(tiny_cfg, tmp_path):
    """Same frames through the test mapper and the test loop give the same detections."""
    predictor = _predictor(tiny_cfg)
    frames = _frames(5, seed=6)
    records = []
    for t, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{t}.png"), frame)
        records.append(
            dict(file_name=str(tmp_path / f"{t}.png"), height=SIZE[0], width=SIZE[1],
                 image_id=t, video_id="v", frame_idx=t, video_length=5)
        )  # fmt: skip
    mapper = VideoDatasetMapper(predictor.cfg, is_train=False)
    evaluated = list(run_on_video(predictor.model, map(mapper, records)))
    predicted = list(predictor.run_video(frames))
    assert len(evaluated) == len(predicted) == 5
    assert sum(len(inst) for _, inst in predicted) > 0
    for (meta, output), (t, inst) in zip(evaluated, predicted):
        assert meta["frame_idx"] == t
        assert torch.equal(output["instances"].pred_boxes.tensor, inst.pred_boxes.tensor), t
        assert torch.equal(output["instances"].scores, inst.scores), t


def test_seq_nms_results_come_at_the_end_and_match_seq_nms_of_the_raw_results(tiny_cfg):
    frames = _frames(6, seed=2)
    raw = list(_predictor(tiny_cfg.clone()).run_video(frames))
    predictor = _predictor(tiny_cfg, **{"TEST.SEQ_NMS.ENABLED": True})
    for t, frame in enumerate(frames):
        assert predictor.put(frame) == [], t
    rescored = predictor.flush()
    expected = seq_nms_instances(
        [inst for _, inst in raw], link_iou=0.5, suppress_iou=0.3, rescore="avg"
    )
    assert [t for t, _ in rescored] == list(range(6))
    assert sum(len(inst) for _, inst in rescored) > 0
    for (t, got), want in zip(rescored, expected):
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor), t
        assert torch.equal(got.scores, want.scores), t
        assert torch.equal(got.seq_ids, want.seq_ids), t


def test_an_abandoned_video_does_not_leak_into_the_next(tiny_cfg):
    predictor = _predictor(tiny_cfg)
    video_a, video_b = _frames(5, seed=3), _frames(5, seed=4)
    alone = list(predictor.run_video(video_a))
    unfinished = predictor.run_video(video_b)
    next(unfinished)  # stops with frames of b in the window
    again = list(predictor.run_video(video_a))
    assert [t for t, _ in again] == list(range(5))
    for (t, a), (_, b) in zip(alone, again):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor), t
        assert torch.equal(a.scores, b.scores), t


def test_bad_videos_and_frames_raise_errors_naming_them(tiny_cfg, tmp_path):
    predictor = _predictor(tiny_cfg, "SingleFrameAggregation", (0, 0))
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        predictor.run_video(missing)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    for bad in (empty, garbage):
        with pytest.raises((OSError, ValueError), match=bad.name):
            list(predictor.run_video(bad))
    with pytest.raises(ValueError, match="no frames"):
        list(predictor.run_video([]))

    frame = _frames(1)[0]
    with pytest.raises(ValueError, match="uint8"):
        predictor.put(frame.astype(np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        predictor.put(torch.from_numpy(frame))
    predictor.reset("clip")
    predictor.put(frame)
    with pytest.raises(ValueError, match=r"frame 1 of video 'clip' is 36x48"):
        predictor.put(frame[::2, ::2].copy())


def test_a_model_without_the_streaming_api_is_refused(tiny_cfg):
    tiny_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    with pytest.raises(TypeError, match="GeneralizedRCNN.*not a video meta-architecture"):
        VideoPredictor(tiny_cfg)


def test_video_reader_counts_and_rereads_frames(tmp_path):
    frames = _frames(4, seed=5)
    reader = VideoReader(_write_video(tmp_path / "clip.mp4", frames, fps=5))
    assert (len(reader), reader.fps) == (4, 5)
    first, second = list(reader), list(reader)
    assert len(first) == len(second) == 4
    for t, (a, b, original) in enumerate(zip(first, second, frames)):
        assert np.array_equal(a, b), t
        # Lossy codec: close to the written frame, not equal.
        assert np.abs(a.astype(int) - original).mean() < 12, t


@pytest.mark.skipif(
    not REAL_VIDEO.is_file(), reason=f"{REAL_VIDEO} is absent (../shared/data not mounted)"
)
def test_real_full_hd_video_end_to_end(tiny_cfg):
    predictor = _predictor(tiny_cfg, window=(1, 1), **{"INPUT.MIN_SIZE_TEST": 128})
    calls = count_backbone_calls(predictor.model)
    results = list(predictor.run_video(REAL_VIDEO))
    assert calls == [1] * 8
    assert [t for t, _ in results] == list(range(8))
    for t, instances in results:
        assert instances.image_size == (1080, 1920), t
        boxes = instances.pred_boxes.tensor
        assert ((boxes >= 0) & (boxes <= torch.tensor([1920.0, 1080.0] * 2))).all(), t
