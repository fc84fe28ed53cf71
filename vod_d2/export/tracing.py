"""
What tracing a step for export needs around the model's own code.

**RoIs of one image.**
detectron2 builds the (R, 5) RoI tensor of its poolers with ``repeat_interleave`` over the
number of boxes of each image, held in a tensor: a step traced for export then has an output
size that only the tensor's value gives, which AOTInductor cannot compile. A step detects one
image, whose batch index is 0 for every box: :func:`traceable` swaps in that form while a step
is traced (the same values; eager inference is untouched outside the ``with`` block).

**Portable graphs** (``portable=True``, for ONNX). ONNX has no form for vod_d2's compiled ops,
for torchvision's position-sensitive RoIAlign, nor for a stable sort. A portable trace computes
the same values without them: vod_d2's layers run their pure-PyTorch references (the ops that
have none stay, and :func:`vod_d2.export.onnx.onnx_blockers` names them), R-FCN's pooling is
:func:`portable_ps_roi_align`, and the steps rank with ``topk``, whose ONNX form breaks ties by
index as a stable sort does. Their ``torch.cond`` s become both computations and a selection
(:func:`branch`).
"""

import contextlib

import torch
from detectron2.modeling import poolers

__all__ = ["traceable", "is_portable", "portable_ps_roi_align", "branch"]

_PORTABLE = [False]


def is_portable() -> bool:
    """Whether a portable (ONNX) graph is being traced."""
    return _PORTABLE[0]


def branch(predicate: torch.Tensor, true_fn, false_fn, operands):
    """
    ``torch.cond(predicate, true_fn, false_fn, operands)``: one of the two computations. A
    portable graph runs both and selects their outputs instead: torch.onnx does not export
    the conds of the steps yet (it fails decomposing their branches).
    """
    if not is_portable():
        return torch.cond(predicate, true_fn, false_fn, operands)
    yes, no = true_fn(*operands), false_fn(*operands)
    if isinstance(yes, torch.Tensor):
        return torch.where(predicate, yes, no)
    return tuple(torch.where(predicate, a, b) for a, b in zip(yes, no))


def portable_ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """
    ``torchvision.ops.ps_roi_align`` from ``roi_align``: RoIAlign of every score map on every
    bin (the same samples, sums and counts as the op), each bin then reading its own group of
    maps. k^2 times the op's work: only for graphs without the op.
    """
    from torchvision.ops import roi_align

    height, width = (output_size, output_size) if isinstance(output_size, int) else output_size
    bins = height * width
    num_rois = boxes.shape[0]
    groups = input.shape[1] // bins
    pooled = roi_align(input, boxes, (height, width), spatial_scale, sampling_ratio, aligned=True)
    # Bin b of output g reads map g * bins + b: the diagonal of (the maps' bin, the pooled bin).
    pooled = pooled.reshape(num_rois, groups, bins, bins)
    index = torch.arange(bins, device=input.device)
    return pooled[:, :, index, index].reshape(num_rois, groups, height, width)


def _single_image_pooler_format(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``poolers._convert_boxes_to_pooler_format`` whose batch indices need no data when
    there is one image (``sizes`` has one element: a static shape)."""
    if sizes.numel() != 1:
        return _ORIGINAL(boxes, sizes)
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)


_ORIGINAL = poolers._convert_boxes_to_pooler_format


@contextlib.contextmanager
def traceable(portable: bool = False):
    """
    Within the block, detectron2's poolers build one image's RoIs without
    ``repeat_interleave``, and with ``portable`` the model computes without the ops ONNX lacks
    (see the module docstring).
    """
    from ..layers import _ext
    from ..modeling.roi_heads import position_sensitive

    saved = (_ext.use_kernel, position_sensitive.ps_roi_align)
    poolers._convert_boxes_to_pooler_format = _single_image_pooler_format
    if portable:
        _PORTABLE[0] = True
        _ext.use_kernel = lambda op, device: False
        position_sensitive.ps_roi_align = portable_ps_roi_align
    try:
        yield
    finally:
        poolers._convert_boxes_to_pooler_format = _ORIGINAL
        _PORTABLE[0] = False
        _ext.use_kernel, position_sensitive.ps_roi_align = saved
