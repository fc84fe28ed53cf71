"""
Video datasets as detectron2 frame records, and their registration.

A record is one frame (detectron2's ``list[dict]``, ordered by ``(video_id, frame_idx)``)::

    file_name (str), height (int), width (int), image_id (int, unique in the dataset),
    video_id (str, unique in the dataset), frame_idx (int, 0-based), video_length (int),
    annotations: list of {bbox: [x0, y0, x1, y1], bbox_mode: BoxMode.XYXY_ABS,
                          category_id (contiguous), track_id (-1 if none), occluded, generated,
                          and where the data gives it visible (float, the visible share)},
    conditions (tuple of str, only where the data tags the frame, e.g. ("motion_blur",))

``conditions``, ``occluded`` and ``visible`` are what the evaluation by condition reads
(:mod:`vod_d2.evaluation.conditions`).

A DET still image is a one-frame video. Support frames are found through
:func:`build_frame_table`, so records carry no lists. Importing this package registers the
built-in datasets (:mod:`.builtin`) without reading any file. Datasets of your own are
registered in Python (:func:`register_video_dataset`) or declared in a datasets file that the
config names (``DATASETS.FILE``, :mod:`.datasets_file`).
"""

from .builtin import BUILTIN_DATASETS, datasets_root, register_all_builtin
from .cache import default_cache_dir
from .classes import SYNTHETIC_CLASSES, VID_CLASSES, VID_WNIDS
from .cocovid import cocovid_categories, load_cocovid_json
from .datasets_file import register_datasets_file, register_datasets_from_config
from .frame_table import NumberedFrames, build_frame_table
from .image_sets import fgfa_train_frames
from .imagenet_vid import load_imagenet_det, load_imagenet_vid
from .register import dataset_classes, register_video_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "NumberedFrames",
    "SYNTHETIC_CLASSES",
    "VID_CLASSES",
    "VID_WNIDS",
    "build_frame_table",
    "cocovid_categories",
    "dataset_classes",
    "datasets_root",
    "default_cache_dir",
    "fgfa_train_frames",
    "load_cocovid_json",
    "load_imagenet_det",
    "load_imagenet_vid",
    "register_all_builtin",
    "register_datasets_file",
    "register_datasets_from_config",
    "register_video_dataset",
]

register_all_builtin()
