"""The state of an exported step: named tensors of fixed shape, and their start values."""

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

__all__ = ["StateTensor", "FRAME_INDEX_DOC"]

#: How every ``*.frames`` state tensor is read.
FRAME_INDEX_DOC = "frame index held in each slot, -1 for an empty slot"


@dataclass(frozen=True)
class StateTensor:
    """
    One tensor of a step's state.

    Attributes:
        name: its name, the same in the step's inputs and outputs (``window.res5.feature``).
        shape: its shape for the frame size it was made for.
        dtype: its dtype.
        fill: the value every element has at the start of a video (``reset``).
        doc: what it holds.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    fill: float
    doc: str

    def initial(self, device=None) -> torch.Tensor:
        """The tensor at the start of a video: ``shape`` filled with ``fill``."""
        return torch.full(self.shape, self.fill, dtype=self.dtype, device=device)

    def describe(self) -> Dict:
        """A JSON-able description: name, shape, dtype (``"float32"``, ``"int64"``), fill, doc."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fill": self.fill,
            "doc": self.doc,
        }
