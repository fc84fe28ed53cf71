"""MODEL.FLOW.INPUT_SCALE: what FlowNet-S and RAFT-small see; their flow stays at stride 16."""

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from vod_d2 import add_vod_config
from vod_d2.modeling.flow import build_flow_net

# (scale, the size the network sees of a 256 x 320 frame): 1/s an integer pools 1/s x 1/s
# blocks (ceil), other scales resize to round(s * side).
SCALES = [(1.0, (256, 320)), (0.5, (128, 160)), (0.25, (64, 80)), (0.75, (192, 240))]


def _cfg(name, scale):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.FLOW.NAME = name
    cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR = 8
    cfg.MODEL.FLOW.RAFT.NUM_FLOW_UPDATES = 1
    cfg.MODEL.FLOW.INPUT_SCALE = scale
    return cfg


def _input_sizes(module):
    """Record the (H, W) of every input ``module`` gets."""
    sizes = []
    module.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    return sizes


class _Ones(nn.Module):
    """A flow prediction of ones (FlowNet-S's last conv, replaced)."""

    def forward(self, x):
        return x.new_ones(len(x), 2, *x.shape[-2:])


@pytest.mark.parametrize("scale, seen", SCALES)
def test_the_input_scale_reaches_flownet_s_and_its_flow_stays_in_feature_pixels(scale, seen):
    torch.manual_seed(0)
    net = build_flow_net(_cfg("FlowNetS", scale), 4)
    sizes = _input_sizes(net.conv1)
    net.predict_flow2 = _Ones()
    frames = torch.rand(2, 1, 3, 256, 320) * 255
    flow, scale_map = net(*frames)
    assert sizes == [seen]
    assert flow.shape == (1, 2, 16, 20) and scale_map.shape == (1, 4, 16, 20)
    # A prediction of 1 is div_flow (20) pixels of the network's input: 20 / (16 s) cells
    # (DFF's 2.5 at half resolution).
    assert torch.allclose(flow, torch.full_like(flow, 20 / (16 * scale)))
    levels = net.multiscale_flows(*frames)
    assert [stride for _, stride in levels] == [2**k / scale for k in (6, 5, 4, 3)] + [16]


class _ConstantFlow(nn.Module):
    """Records RAFT's input size; returns a flow of (4, -8) pixels of RAFT's input."""

    def __init__(self, raft):
        super().__init__()
        self.raft, self.sizes = raft, []

    def forward(self, image1, image2, num_flow_updates):
        self.sizes.append(tuple(image1.shape[-2:]))
        flow = self.raft(image1, image2, num_flow_updates=num_flow_updates)[-1]
        return [
            torch.stack([torch.full_like(flow[:, 0], 4.0), torch.full_like(flow[:, 1], -8.0)], 1)
        ]


@pytest.mark.parametrize("scale, seen", SCALES)
def test_the_input_scale_reaches_raft_and_its_flow_stays_in_feature_pixels(scale, seen):
    torch.manual_seed(1)
    net = build_flow_net(_cfg("RAFTSmall", scale), 4)
    net.raft = _ConstantFlow(net.raft)
    flow, scale_map = net(*(torch.rand(2, 1, 3, 256, 320) * 255))
    # Padded to RAFT's 128-pixel minimum where smaller.
    assert net.raft.sizes == [tuple(max(128, side) for side in seen)]
    assert flow.shape == (1, 2, 16, 20) and scale_map.shape == (1, 4, 16, 20)
    # A feature cell is 16 s pixels of RAFT's input.
    expected = torch.tensor([4.0, -8.0]).view(1, 2, 1, 1) / (16 * scale)
    assert torch.allclose(flow, expected.expand_as(flow))


def test_a_scale_that_is_not_positive_is_refused():
    for name in ("FlowNetS", "RAFTSmall"):
        with pytest.raises(ValueError, match="MODEL.FLOW.INPUT_SCALE must be positive"):
            build_flow_net(_cfg(name, 0.0), 4)
