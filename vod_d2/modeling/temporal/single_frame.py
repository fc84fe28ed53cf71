"""The trivial aggregation: the reference frame alone (the single-frame baseline)."""

from torch import nn

from .build import TEMPORAL_AGGREGATION_REGISTRY

__all__ = ["SingleFrameAggregation"]


@TEMPORAL_AGGREGATION_REGISTRY.register()
class SingleFrameAggregation(nn.Module):
    """Returns the reference feature unchanged and ignores support frames."""

    def __init__(self, cfg, input_shape):
        """
        Args:
            cfg: unused; kept for the registry's call signature.
            input_shape (ShapeSpec): shape of the aggregated backbone map.
        """
        super().__init__()
        self._shape = input_shape

    def forward(self, ref, support, offsets):
        """
        Args:
            ref (Tensor): (B, C, H, W) reference features.
            support (Tensor): (B, S, C, H, W) support features (ignored).
            offsets (Tensor): (B, S) frame offsets (ignored).

        Returns:
            Tensor: ``ref``, (B, C, H, W).
        """
        return ref

    def output_shape(self):
        return self._shape

    def reset(self):
        """Stateless: nothing to forget."""
