"""
ONNX export of a step traced as a portable graph (:func:`vod_d2.export.tracing.traceable`
with ``portable=True``: vod_d2's layers on their pure-PyTorch references, R-FCN's pooling from
RoIAlign, ranking by ``topk``).

torchvision's ``nms``, ``roi_align`` and ``deform_conv2d`` have ONNX forms (``NonMaxSuppression``,
``RoiAlign``, ``DeformConv``). :func:`onnx_blockers` names the other ops a portable graph still
calls; an export whose model onnxruntime cannot load or run is reported by the exporter with
onnxruntime's first line.
"""

from typing import List, Sequence

import torch

__all__ = ["ONNX_OPS", "onnx_blockers", "export_onnx"]

# Non-aten ops with an ONNX form.
ONNX_OPS = ("torchvision::nms", "torchvision::roi_align", "torchvision::deform_conv2d")
# Who calls the ops that have none, for the refusal.
_CALLERS = {
    "torchvision::ps_roi_align": "R-FCN (torchvision.ops.ps_roi_align)",
    "vod_d2::deform_ps_roi_pool_forward": "deformable R-FCN (vod_d2.layers.deform_psroi_pool)",
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
