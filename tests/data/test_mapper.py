import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

from vod_d2.data import FrameReadError, FrameSampler, VideoDatasetMapper


def _bright_column(image):
    """x of the brightest column of a (C, H, W) frame."""
    return int(image.float().mean(dim=(0, 1)).argmax())


def _mapper(cfg, frame_files, flip_prob):
    return VideoDatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(96, 200), T.RandomFlip(prob=flip_prob)],
        image_format="RGB",
        frame_sampler=FrameSampler("fixed", offsets=(-2, -1, 1, 2)),
        frame_table=frame_files,
    )


def test_support_frames_get_the_reference_frames_augmentation(cfg, frame_files, records):
    record = records[3]  # video a, frame 3
    for flip_prob in (0.0, 1.0):
        out = _mapper(cfg, frame_files, flip_prob)(record)
        assert out["support_offsets"] == [-2, -1, 1, 2]
        assert out["image"].shape == (3, 96, 128)
        for offset, support in zip(out["support_offsets"], out["support_images"]):
            assert support.shape == out["image"].shape and support.is_contiguous()
            # Frame t's column sits at x = 4t + 2, scaled by 2; a flip mirrors it.
            x = 2 * (4 * (3 + offset) + 2)
            expected = 127 - x - 1 if flip_prob else x
            assert abs(_bright_column(support) - expected) <= 1, (flip_prob, offset)
        box = out["instances"].gt_boxes.tensor[0]
        expected_x0 = 128 - 2 * 24.0 if flip_prob else 2 * 12.0
        assert torch.isclose(box[0], torch.tensor(expected_x0)), (flip_prob, box)


def test_supports_clamp_to_the_video_borders(cfg, frame_files, records):
    out = _mapper(cfg, frame_files, 0.0)(records[6])  # video b, frame 0
    assert out["support_offsets"] == [0, 0, 1, 2]
    assert torch.equal(out["support_images"][0], out["image"])


def test_test_mode_maps_the_frame_alone(cfg, records):
    mapper = VideoDatasetMapper(cfg, is_train=False)
    out = mapper(records[0])
    assert "support_images" not in out and "annotations" not in out
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3


def test_missing_support_frame_names_the_video(cfg, frame_files, records):
    mapper = _mapper(cfg, {"a": frame_files["a"]}, 0.0)
    with pytest.raises(KeyError, match="'b'"):
        mapper(records[7])


def test_same_numpy_seed_gives_the_same_sample(cfg, frame_files, records):
    mapper = VideoDatasetMapper(
        is_train=True,
        augmentations=[T.RandomFlip(prob=0.5)],
        image_format="RGB",
        frame_sampler=FrameSampler("uniform_range", num_support=2, range=3),
        frame_table=frame_files,
    )
    record = records[2]

    def draw(seed):
        np.random.seed(seed)
        return [
            (o["support_offsets"], _bright_column(o["image"])) for o in map(mapper, [record] * 8)
        ]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_a_corrupt_frame_names_its_file(cfg, frame_files, records):
    mapper = _mapper(cfg, frame_files, 0.5)
    support = frame_files["a"][2]
    with open(support, "rb") as f:
        data = f.read()
    with open(support, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    with pytest.raises(OSError, match=f"Cannot read the frame {support}"):
        mapper(records[3])  # a support frame of frame 3
    with open(records[3]["file_name"], "wb") as f:
        f.write(b"not an image")
    with pytest.raises(OSError, match=f"Cannot read the frame {records[3]['file_name']}"):
        mapper(records[3])


def test_a_frame_unreadable_in_a_loader_worker_is_one_line(cfg, frame_files, records):
    path = records[3]["file_name"]
    with open(path, "wb") as f:
        f.write(b"not an image")
    # PyTorch raises the worker's error again in the main process, the worker's traceback in
    # its message: str() keeps the one line naming the frame.
    loader = torch.utils.data.DataLoader(
        records, batch_size=None, num_workers=1, collate_fn=_mapper(cfg, frame_files, 0.5)
    )
    with pytest.raises(FrameReadError) as raised:
        list(loader)
    assert "Traceback" in raised.value.args[0]
    assert str(raised.value) == f"Cannot read the frame {path}: not an image PIL knows"
