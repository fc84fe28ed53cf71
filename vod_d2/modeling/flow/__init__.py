"""Flow networks of flow-guided methods (DFF, Impression Network); importing registers them."""

from .base import FEATURE_STRIDE, FlowNetwork, ScaleMap
from .build import FLOW_NET_REGISTRY, build_flow_net
from .diagnostic import SyntheticOracleFlow, ZeroFlow
from .flownet_s import FlowNetS, load_flownets_checkpoint
from .raft import RAFTSmall
from .warp import warp

__all__ = [
    "FEATURE_STRIDE",
    "FlowNetwork",
    "ScaleMap",
    "FLOW_NET_REGISTRY",
    "build_flow_net",
    "FlowNetS",
    "load_flownets_checkpoint",
    "RAFTSmall",
    "SyntheticOracleFlow",
    "ZeroFlow",
    "warp",
]
