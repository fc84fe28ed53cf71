"""Training and inference engines for video models."""

from .config_loader import load_config
from .inference import inference_on_videos, run_on_video
from .predictor import VideoPredictor, VideoReader
from .trainer import VideoTrainer, build_video_postprocess

__all__ = [
    "inference_on_videos",
    "load_config",
    "run_on_video",
    "VideoTrainer",
    "build_video_postprocess",
    "VideoPredictor",
    "VideoReader",
]
