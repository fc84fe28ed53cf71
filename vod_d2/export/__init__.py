"""
Every method as an exportable streaming step, its state explicit (README, "Export"):
``step(image, *extra, *state) -> (boxes, scores, classes, count, *new_state)``.

* :mod:`.step`: the :class:`StreamingStep` contract;
* :mod:`.window`, :mod:`.key_frame`, :mod:`.sparse`: the steps of ``VideoRCNN`` (windows of past
  frames, STMN's memories), ``KeyFrameRCNN`` (LSTS, Impression Network, DFF) and Sparse R-CNN /
  SparseVOD, each on the model's own modules;
* :mod:`.heads`: detectron2's RPN, ROI heads and NMS with fixed-shape, padded outputs;
* :mod:`.build`: which configs export, with the one-line refusal of the others;
* :mod:`.exporter`: ``torch.export``, the AOTInductor package, ONNX, ``export.json``;
* :mod:`.runtime`: the runner of an export folder, which imports nothing of vod_d2.
"""

from .build import NotExportable, build_streaming_step, check_exportable, export_blockers
from .exporter import export_model, trace_step
from .heads import Detections
from .state import StateTensor
from .step import StreamingStep

__all__ = [
    "Detections",
    "NotExportable",
    "StateTensor",
    "StreamingStep",
    "build_streaming_step",
    "check_exportable",
    "export_blockers",
    "export_model",
    "trace_step",
]
