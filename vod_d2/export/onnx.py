"""
ONNX export of a step traced as a portable graph (:func:`vod_d2.export.tracing.traceable`
with ``portable=True``: vod_d2's layers on their pure-PyTorch references, R-FCN's pooling from
RoIAlign, ranking by ``topk``).

torchvision's ``nms`` and ``roi_align`` have ONNX forms (``NonMaxSuppression``, ``RoiAlign``), and
``torch.cond`` becomes ``If``. :func:`onnx_blockers` names the other ops a portable graph still
calls; an export whose model onnxruntime cannot load or run is reported by the exporter with
onnxruntime's first line.
"""

from typing import List, Sequence

import torch

__all__ = ["ONNX_OPS", "onnx_blockers", "export_onnx"]

# Non-aten ops with an ONNX form.
ONNX_OPS = ("torchvision::nms", "torchvision::roi_align")
# Who calls the ops that have none, for the refusal.
_CALLERS = {
    "torchvision::deform_conv2d": "STSN's sampling block and deformable backbones "
    "(torchvision.ops.deform_conv2d)",
    "torchvision::ps_roi_align": "R-FCN (torchvision.ops.ps_roi_align)",
}


def onnx_blockers(ops: Sequence[str]) -> List[str]:
    """The ops of a portable graph (``namespace::name``) with no ONNX form, one line each."""
    blockers = []
    for op in ops:
        if op.startswith("aten::") or op in ONNX_OPS:
            continue
        caller = _CALLERS.get(op, "")
        blockers.append(f"{op}{f' ({caller})' if caller else ''} has no ONNX form yet")
    return blockers


def export_onnx(program, path: str) -> None:
    """Write ``program``, a portable ``torch.export`` program, as an ONNX model at ``path``."""
    onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    onnx_program.save(path)
