"""Video meta-architectures, registered in detectron2's META_ARCH_REGISTRY."""

from .ensemble import StaticEnsembleRCNN
from .video_base import Payload, VideoDetector
from .video_rcnn import VideoRCNN

__all__ = ["Payload", "StaticEnsembleRCNN", "VideoDetector", "VideoRCNN"]
