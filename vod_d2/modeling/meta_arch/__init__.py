"""Video meta-architectures, registered in detectron2's META_ARCH_REGISTRY."""

from .ensemble import StaticEnsembleRCNN
from .key_frame_rcnn import KeyFrameRCNN
from .video_base import Payload, VideoDetector
from .video_rcnn import VideoRCNN

__all__ = ["KeyFrameRCNN", "Payload", "StaticEnsembleRCNN", "VideoDetector", "VideoRCNN"]
