"""The trivial aggregation: the reference frame alone (the single-frame baseline)."""

from .build import TEMPORAL_AGGREGATION_REGISTRY, TemporalAggregation

__all__ = ["SingleFrameAggregation"]


@TEMPORAL_AGGREGATION_REGISTRY.register()
class SingleFrameAggregation(TemporalAggregation):
    """Returns the reference feature unchanged; support frames contribute nothing."""

    support_keys = ()

    def __init__(self, cfg, input_shape):
        """
        Args:
            cfg: unused; kept for the registry's call signature.
            input_shape (ShapeSpec): shape of the aggregated backbone map.
        """
        super().__init__(input_shape)

    def forward(self, ref, support, offsets, frames):
        """
        Args:
            ref (dict): ``{"feature": (B, C, H, W)}`` reference features.
            support (dict): empty (no support key).
            offsets (Tensor): (B, S) frame offsets (ignored).
            frames: the reference frames' metadata (ignored).

        Returns:
            Tensor: ``ref["feature"]``, (B, C, H, W).
        """
        return ref["feature"]
