"""Post-processing of a whole video's detections."""

from .seq_nms import SeqNmsResult, seq_nms, seq_nms_instances, seq_nms_kwargs_from_config

__all__ = ["SeqNmsResult", "seq_nms", "seq_nms_instances", "seq_nms_kwargs_from_config"]
