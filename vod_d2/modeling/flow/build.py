"""Registry of flow networks, and the one function that builds (and loads) the configured one."""

import logging

from detectron2.utils.registry import Registry

__all__ = ["FLOW_NET_REGISTRY", "build_flow_net"]

logger = logging.getLogger(__name__)

FLOW_NET_REGISTRY = Registry("FLOW_NET")
FLOW_NET_REGISTRY.__doc__ = """
Registry for flow networks of flow-guided methods (Deep Feature Flow, Impression Network).

The registered object is called with ``obj(cfg, feature_channels)``, where ``feature_channels``
is the width C of the feature the flow will warp (the scale map S has C channels), and must
return a :class:`~vod_d2.modeling.flow.base.FlowNetwork`:
``forward(cur_images, ref_images) -> (flow (N, 2, h, w), scale (N, C, h, w))`` for (N, 3, H, W)
frames in [0, 255] and ``INPUT.FORMAT`` order, ``h, w = ceil(H / 16), ceil(W / 16)``; and
``load_pretrained(path)`` for ``MODEL.FLOW.WEIGHTS``.
"""


def build_flow_net(cfg, feature_channels: int):
    """
    Build ``cfg.MODEL.FLOW.NAME`` for C = ``feature_channels`` and load ``cfg.MODEL.FLOW.WEIGHTS``
    into it when set.

    The flow weights are loaded when the model is built; a later ``MODEL.WEIGHTS`` checkpoint
    (detectron2's checkpointer) overwrites them only where it has the flow network's keys, so a
    detector checkpoint without a flow network leaves the pretrained flow in place.
    """
    flow_net = FLOW_NET_REGISTRY.get(cfg.MODEL.FLOW.NAME)(cfg, feature_channels)
    if cfg.MODEL.FLOW.WEIGHTS:
        flow_net.load_pretrained(cfg.MODEL.FLOW.WEIGHTS)
        flow_net.loaded_weights = cfg.MODEL.FLOW.WEIGHTS
    return flow_net
