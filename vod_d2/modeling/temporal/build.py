"""Registry of temporal aggregation modules: the one place a video method plugs into VideoRCNN."""

from detectron2.utils.registry import Registry

TEMPORAL_AGGREGATION_REGISTRY = Registry("TEMPORAL_AGGREGATION")
TEMPORAL_AGGREGATION_REGISTRY.__doc__ = """
Registry for temporal aggregation modules, which turn the backbone feature of a reference frame
and those of its support frames into the feature the detection heads see.

The registered object is called with ``obj(cfg, input_shape)``, where ``input_shape`` is the
:class:`ShapeSpec` of the aggregated backbone map (``cfg.MODEL.VIDEO.IN_FEATURE``), and must
return an ``nn.Module`` with:

* ``forward(ref, support, offsets) -> Tensor``:

  - ``ref`` (Tensor): (B, C, H, W) feature of the reference frames.
  - ``support`` (Tensor): (B, S, C, H, W) features of the S support frames of each reference
    (S may be 0). During training they follow ``cfg.INPUT.VIDEO.TRAIN_SAMPLING``; at test time
    they are the window ``cfg.MODEL.VIDEO.TEST_WINDOW`` around the reference, clamped to the
    video (so boundary frames repeat the first/last frame).
  - ``offsets`` (Tensor): (B, S) int64 frame offsets ``support_frame - reference_frame``.
  - returns (B, C_out, H, W), with ``C_out == output_shape().channels``.

* ``output_shape() -> ShapeSpec`` of the returned feature (same stride as the input).
* optionally ``encode(x) -> Tensor``: a per-frame, window-independent transform of (N, C, H, W)
  backbone maps to (N, C_enc, H, W). VideoRCNN then applies it once to every frame (each frame
  of a training batch; each test frame as it enters the feature window) and passes the encoded
  maps as ``ref`` and ``support``, so work on a frame is not repeated for every window it is in.
* ``reset()``: forget any recurrent state; called before the first frame of every test video.
"""


def build_temporal_aggregation(cfg, input_shape):
    """Build the module named by ``cfg.MODEL.VIDEO.AGGREGATION`` for a map of ``input_shape``."""
    return TEMPORAL_AGGREGATION_REGISTRY.get(cfg.MODEL.VIDEO.AGGREGATION)(cfg, input_shape)
