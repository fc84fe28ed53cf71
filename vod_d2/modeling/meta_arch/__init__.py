"""Video meta-architectures, registered in detectron2's META_ARCH_REGISTRY."""

from .frame_window import FeatureWindow
from .video_rcnn import VideoRCNN

__all__ = ["FeatureWindow", "VideoRCNN"]
