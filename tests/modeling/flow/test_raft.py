import logging
import re

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn
from torchvision.models.optical_flow import raft_small

from vod_d2 import add_vod_config
from vod_d2.modeling.flow import RAFTSmall, build_flow_net
from vod_d2.modeling.flow import raft as raft_module


def _cfg():
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.FLOW.NAME = "RAFTSmall"
    cfg.MODEL.FLOW.RAFT.NUM_FLOW_UPDATES = 2
    return cfg


def _frames(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, h, w, generator=g) * 255 for _ in range(2)]


class _ConstantFlow(nn.Module):
    """Runs the real RAFT (so its update block runs), records its inputs, returns a fixed flow."""

    def __init__(self, raft, dx, dy):
        super().__init__()
        self.raft, self.dx, self.dy, self.inputs = raft, dx, dy, []

    def forward(self, image1, image2, num_flow_updates):
        self.inputs.append((image1, image2, num_flow_updates))
        flow = self.raft(image1, image2, num_flow_updates=num_flow_updates)[-1]
        return [
            torch.stack(
                [torch.full_like(flow[:, 0], self.dx), torch.full_like(flow[:, 1], self.dy)], 1
            )
        ]


def test_builds_and_runs_at_a_tiny_size_in_the_flownet_convention():
    torch.manual_seed(0)
    net = build_flow_net(_cfg(), 6)
    assert isinstance(net, RAFTSmall)
    # Sizes divisible by 8 at half resolution or not, and below RAFT's 128-pixel minimum.
    for h, w in [(64, 96), (100, 137), (128, 128), (300, 260)]:
        cur, ref = _frames(2, h, w, seed=h)
        flow, scale = net(cur, ref)
        assert flow.shape == (2, 2, -(-h // 16), -(-w // 16))
        assert scale.shape == (2, 6, -(-h // 16), -(-w // 16))
        assert torch.isfinite(flow).all()
        assert torch.equal(scale, torch.ones_like(scale))


def test_flow_is_converted_to_feature_pixels_and_frames_to_rgb_in_minus_one_one():
    torch.manual_seed(1)
    net = build_flow_net(_cfg(), 4)
    # 8 pixels of RAFT's (half-resolution) input along x, -16 along y = (1, -2) feature pixels.
    net.raft = _ConstantFlow(net.raft, 8.0, -16.0)
    cur = torch.zeros(1, 3, 40, 72)
    cur[:, 1] = 127.5  # BGR (0, 127.5, 255) -> RGB (255, 127.5, 0) -> (1, 0, -1)
    cur[:, 2] = 255.0
    flow, scale = net(cur, cur.clone())
    assert flow.shape == (1, 2, 3, 5)
    assert torch.equal(flow[:, 0], torch.ones(1, 3, 5))
    assert torch.equal(flow[:, 1], torch.full((1, 3, 5), -2.0))
    image1, image2, updates = net.raft.inputs[0]
    # Half of 40 x 72 is 20 x 36, padded to RAFT's 128 minimum by replicating the border.
    assert image1.shape == (1, 3, 128, 128) and updates == 2
    expected = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 128, 128)
    assert torch.equal(image1, expected)
    assert torch.equal(image2, expected)


def test_the_current_frame_is_raft_image1():
    torch.manual_seed(2)
    net = build_flow_net(_cfg(), 4)
    net.raft = _ConstantFlow(net.raft, 0.0, 0.0)
    cur = torch.zeros(1, 3, 32, 32)
    net(cur, torch.full((1, 3, 32, 32), 255.0))
    image1, image2, _ = net.raft.inputs[0]
    assert (image1 == -1).all() and (image2 == 1).all()


def test_gradients_reach_raft_and_the_scale_map():
    torch.manual_seed(3)
    net = build_flow_net(_cfg(), 4)
    cur, ref = _frames(1, 64, 64, seed=4)
    nn.init.normal_(net.scale.conv.weight, std=1e-3)
    net.propagate(torch.randn(1, 4, 4, 4), cur, ref).square().sum().backward()
    assert net.scale.conv.weight.grad.abs().sum() > 0
    assert net.raft.update_block.flow_head.conv2.weight.grad.abs().sum() > 0
    assert net.raft.feature_encoder.convnormrelu[0].weight.grad.abs().sum() > 0


def test_loads_a_raft_small_state_dict_and_names_bad_keys(tmp_path):
    torch.manual_seed(4)
    state = raft_small(weights=None).state_dict()
    path = tmp_path / "raft_small.pth"
    torch.save(state, path)
    cfg = _cfg()
    cfg.MODEL.FLOW.WEIGHTS = str(path)
    net = build_flow_net(cfg, 4)
    for key, value in state.items():
        assert torch.equal(net.raft.state_dict()[key], value), key
    assert torch.equal(net.scale.conv.weight, torch.zeros(4, 96, 1, 1))

    bad = dict(state)
    bad.pop("update_block.flow_head.conv1.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"missing keys \['update_block.flow_head.conv1.weight'\]"):
        build_flow_net(cfg, 4)


def test_a_torchvision_weights_name_goes_through_torchvision(monkeypatch):
    torch.manual_seed(5)
    state = raft_small(weights=None).state_dict()
    asked = []

    class _Weights:
        def get_state_dict(self, progress):
            return state

    monkeypatch.setattr(raft_module, "get_weight", lambda name: asked.append(name) or _Weights())
    cfg = _cfg()
    cfg.MODEL.FLOW.WEIGHTS = "Raft_Small_Weights.C_T_V2"
    net = build_flow_net(cfg, 4)
    assert asked == ["Raft_Small_Weights.C_T_V2"]
    assert torch.equal(net.raft.state_dict()["update_block.flow_head.conv2.weight"],
                       state["update_block.flow_head.conv2.weight"])  # fmt: skip


def test_bad_settings_are_refused():
    cfg = _cfg()
    cfg.MODEL.FLOW.RAFT.NUM_FLOW_UPDATES = 0
    with pytest.raises(ValueError, match="NUM_FLOW_UPDATES"):
        build_flow_net(cfg, 4)
    net = build_flow_net(_cfg(), 4)
    with pytest.raises(ValueError, match="different shapes"):
        net(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 48))


# The authors' layer names (princeton-vl/RAFT core/extractor.py and update.py) for torchvision's,
# written from their code, independently of the loader's mapping.
_TO_AUTHORS = (
    (r"^feature_encoder\.", "fnet."),
    (r"^context_encoder\.", "cnet."),
    (r"^(fnet|cnet)\.convnormrelu\.0\.", r"\1.conv1."),
    (r"^(fnet|cnet)\.conv\.", r"\1.conv2."),
    (r"\.convnormrelu(\d)\.0\.", r".conv\1."),
    (r"\.motion_encoder\.convcorr1\.0\.", ".encoder.convc1."),
    (r"\.motion_encoder\.convflow(\d)\.0\.", r".encoder.convf\1."),
    (r"\.motion_encoder\.conv\.0\.", ".encoder.conv."),
    (r"\.recurrent_block\.convgru1\.", ".gru."),
)


def _authors_checkpoint(state):
    """A torchvision raft_small state dict as the authors save it (DataParallel, their names)."""
    authors = {}
    for name, value in state.items():
        for pattern, replacement in _TO_AUTHORS:
            name = re.sub(pattern, replacement, name)
        authors[f"module.{name}"] = value
    return authors


def test_both_raft_small_formats_load_into_the_same_network_with_the_same_outputs(tmp_path, caplog):
    torch.manual_seed(6)
    source = raft_small(weights=None)
    state = source.state_dict()
    authors = _authors_checkpoint(state)
    # A few of the 106 names of the authors' raft-small.pth, as their file has them.
    assert len(authors) == 106 and {
        "module.fnet.conv1.weight", "module.fnet.layer2.0.downsample.0.bias",
        "module.cnet.layer3.1.conv3.weight", "module.cnet.conv2.bias",
        "module.update_block.encoder.convc1.weight", "module.update_block.encoder.convf2.bias",
        "module.update_block.gru.convq.weight", "module.update_block.flow_head.conv2.bias",
    } <= set(authors)  # fmt: skip
    files = {"torchvision's state dict": tmp_path / "tv.pth", "the authors'": tmp_path / "a.pth"}
    torch.save(state, files["torchvision's state dict"])
    torch.save(authors, files["the authors'"])
    cur, ref = _frames(1, 48, 64, seed=7)
    outputs = []
    for seed, (fmt, path) in enumerate(files.items()):
        torch.manual_seed(10 + seed)  # each network starts elsewhere
        cfg = _cfg()
        cfg.MODEL.FLOW.WEIGHTS = str(path)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vod_d2"):
            net = build_flow_net(cfg, 4)
        loaded = [r.getMessage() for r in caplog.records if "Loaded RAFT-small" in r.getMessage()]
        assert len(loaded) == 1 and fmt in loaded[0] and str(path) in loaded[0], loaded
        with torch.no_grad():
            outputs.append(net(cur, ref)[0])
    expected = build_flow_net(_cfg(), 4)
    expected.raft.load_state_dict(state)
    with torch.no_grad():
        expected_flow = expected(cur, ref)[0]
    assert expected_flow.abs().max() > 0
    for flow in outputs:
        assert torch.equal(flow, expected_flow)


def test_an_unknown_weights_format_is_one_clear_error(tmp_path):
    flownet = {"state_dict": {"conv1.0.weight": torch.zeros(64, 6, 7, 7)}, "div_flow": 20}
    cases = {"flownets.pth": flownet, "tensor.pth": torch.zeros(3), "empty.pth": {}}
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    for name in [*cases, "text.pth"]:
        cfg = _cfg()
        cfg.MODEL.FLOW.WEIGHTS = str(tmp_path / name)
        with pytest.raises(ValueError) as error:
            build_flow_net(cfg, 4)
        message = str(error.value)
        assert "\n" not in message and str(tmp_path / name) in message, message
        assert "is not a RAFT-small checkpoint" in message, message
        assert "expected torchvision's raft_small state dict" in message, message
        assert "or the authors' RAFT-small checkpoint" in message, message
