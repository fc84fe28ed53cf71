"""Video meta-architectures, registered in detectron2's META_ARCH_REGISTRY."""

from .video_base import Payload, VideoDetector
from .video_rcnn import VideoRCNN

__all__ = ["Payload", "VideoDetector", "VideoRCNN"]
