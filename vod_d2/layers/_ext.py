"""Loading of the compiled ops (``vod_d2._C``) and the choice between kernel and reference.

The extension registers its ops as ``torch.ops.vod_d2.*``. Each layer asks :func:`use_kernel`
whether to call them; when the extension is missing, or was built without CUDA and a tensor is on
a GPU, the layer runs its pure-PyTorch reference instead and says so once per op and reason.
"""

import logging

import torch

try:
    from vod_d2 import _C

    _IMPORT_ERROR = ""
except ImportError as e:  # not built (or built against another torch): use the references
    _C = None
    _IMPORT_ERROR = str(e)

logger = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()


def _warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        logger.warning(
            "%s: %s; using the (slower, more memory hungry) PyTorch reference", op, reason
        )


def extension_available() -> bool:
    """Whether ``vod_d2._C`` could be imported."""
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
            f"vod_d2._C cannot be imported ({_IMPORT_ERROR}); build it with "
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
