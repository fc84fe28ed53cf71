"""Video data: dataset registration, frame sampling, mappers, samplers and loaders."""

from .build import build_video_test_loader, build_video_train_loader
from .checks import check_dataset_contents, check_datasets, model_num_classes
from .datasets import (
    VID_CLASSES,
    build_frame_table,
    dataset_classes,
    load_cocovid_json,
    load_imagenet_det,
    load_imagenet_vid,
    register_datasets_file,
    register_datasets_from_config,
    register_video_dataset,
)
from .frame_sampling import FrameSampler
from .mapper import FrameReadError, VideoDatasetMapper
from .samplers import MixedVideoTrainingSampler, VideoInferenceSampler
from .video_source import VideoFrameSource

__all__ = [
    "VID_CLASSES",
    "build_frame_table",
    "check_dataset_contents",
    "check_datasets",
    "dataset_classes",
    "load_cocovid_json",
    "load_imagenet_det",
    "load_imagenet_vid",
    "model_num_classes",
    "register_datasets_file",
    "register_datasets_from_config",
    "register_video_dataset",
    "build_video_test_loader",
    "build_video_train_loader",
    "FrameReadError",
    "FrameSampler",
    "VideoDatasetMapper",
    "MixedVideoTrainingSampler",
    "VideoInferenceSampler",
    "VideoFrameSource",
]
