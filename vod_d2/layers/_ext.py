"""Loading of the compiled ops (``vod_d2._C``) and the choice between kernel and reference.

The extension registers its ops as ``torch.ops.vod_d2.*``. Each layer asks :func:`use_kernel`
whether to call them; when the extension is missing or out of date (it lacks one of the ops), or
was built without CUDA and a tensor is on a GPU, the layer runs its pure-PyTorch reference
instead and says so once per op and reason.
"""

import logging

import torch

# Every op vod_d2._C registers; a build from older sources that lacks one is not used.
OPS = (
    "deform_similarity_forward",
    "deform_similarity_backward",
    "deform_aggregate_forward",
    "deform_aggregate_backward",
    "local_correlation_forward",
    "local_correlation_backward",
    "local_aggregate_forward",
    "local_aggregate_backward",
    "temporal_roi_align_forward",
    "temporal_roi_align_backward",
    "deform_ps_roi_pool_forward",
    "deform_ps_roi_pool_backward",
)


def _load():
    """(vod_d2._C, "") when it imports and registers every op of :data:`OPS`, else (None, why)."""
    try:
        from vod_d2 import _C
    except ImportError as e:  # not built (or built against another torch): use the references
        return None, f"it cannot be imported: {e}"
    missing = [op for op in OPS if not hasattr(torch.ops.vod_d2, op)]
    if missing:
        return None, f"it lacks {', '.join(missing)} (built from older sources)"
    return _C, ""


_C, _IMPORT_ERROR = _load()

logger = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()


def _warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        logger.warning(
            "%s: %s; using the (slower, more memory hungry) PyTorch reference", op, reason
        )


def extension_available() -> bool:
    """Whether ``vod_d2._C`` could be imported and has every op."""
    return _C is not None


def extension_has_cuda() -> bool:
    """Whether ``vod_d2._C`` was compiled with its CUDA kernels."""
    return _C is not None and _C.with_cuda()


def register_fake(op: str):
    """Decorator: the fake (meta) kernel of ``torch.ops.vod_d2.<op>``, for torch.compile/export.

    It computes the output shapes and dtypes without data. Nothing is registered when the
    extension is missing (the layers then run their references, which need no fake kernels).
    """

    def register(fn):
        if _C is not None:
            torch.library.register_fake(f"vod_d2::{op}")(fn)
        return fn

    return register


def use_kernel(op: str, device: torch.device) -> bool:
    """Whether ``op`` on tensors of ``device`` runs the compiled kernel (else the reference).

    Args:
        op (str): op name, for the one-time warning.
        device (torch.device): device of the op's inputs.
    """
    if _C is None:
        _warn_once(
            op,
            f"vod_d2._C is not usable ({_IMPORT_ERROR}); build it with "
            "`pip install --no-build-isolation -e .`",
        )
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        if _C.with_cuda():
            return True
        _warn_once(op, "vod_d2._C was built without CUDA (rebuild with FORCE_CUDA=1)")
        return False
    _warn_once(op, f"vod_d2._C has no kernel for {device.type} tensors")
    return False
