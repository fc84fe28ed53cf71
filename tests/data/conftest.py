import os
import shutil

import numpy as np
import pytest
from _frames import write_frames
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from PIL import Image

from vod_d2 import add_vod_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def cfg():
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file("configs/synthetic/single_frame.yaml")
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.fixture
def frame_files(tmp_path):
    """Two videos (6 and 3 frames, 48x64) whose frame t has a bright column at x = 4 t + 2."""

    def make(video_id, length):
        files = []
        for t in range(length):
            image = np.zeros((48, 64, 3), np.uint8)
            image[:, 4 * t + 2] = 255
            path = tmp_path / f"{video_id}_{t:06d}.png"
            Image.fromarray(image).save(path)
            files.append(str(path))
        return files

    return {"a": make("a", 6), "b": make("b", 3)}


@pytest.fixture
def records(frame_files):
    """Frame records (the loaders' format) of ``frame_files``, in (video, frame) order."""
    records = []
    for video_id, files in frame_files.items():
        for t, path in enumerate(files):
            records.append(
                {
                    "file_name": path,
                    "height": 48,
                    "width": 64,
                    "image_id": len(records),
                    "video_id": video_id,
                    "frame_idx": t,
                    "video_length": len(files),
                    "annotations": [
                        {
                            "bbox": [4.0 * t, 10.0, 4.0 * t + 12, 30.0],
                            "bbox_mode": BoxMode.XYXY_ABS,
                            "category_id": 1,
                            "track_id": 0,
                            "occluded": False,
                            "generated": False,
                        }
                    ],
                }
            )
    return records


@pytest.fixture
def root(tmp_path):
    """A writable copy of the ILSVRC2015 fixture tree, with its frames."""
    path = tmp_path / "ILSVRC2015"
    shutil.copytree(os.path.join(FIXTURES, "ilsvrc"), path)
    write_frames(str(path))
    return str(path)


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")
