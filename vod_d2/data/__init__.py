"""Video data: dataset registration, frame sampling, mappers, samplers and loaders."""

from .build import build_video_test_loader, build_video_train_loader
from .datasets import (
    VID_CLASSES,
    build_frame_table,
    load_cocovid_json,
    load_imagenet_det,
    load_imagenet_vid,
    register_video_dataset,
)
from .frame_sampling import FrameSampler
from .mapper import VideoDatasetMapper
from .samplers import MixedVideoTrainingSampler, VideoInferenceSampler
from .video_source import VideoFrameSource

__all__ = [
    "VID_CLASSES",
    "build_frame_table",
    "load_cocovid_json",
    "load_imagenet_det",
    "load_imagenet_vid",
    "register_video_dataset",
    "build_video_test_loader",
    "build_video_train_loader",
    "FrameSampler",
    "VideoDatasetMapper",
    "MixedVideoTrainingSampler",
    "VideoInferenceSampler",
    "VideoFrameSource",
]
