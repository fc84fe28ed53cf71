import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from torch import nn

from vod_d2 import add_vod_config
from vod_d2.modeling.flow import FlowNetS, build_flow_net

# ClementPinard/FlowNetPytorch models/FlowNetS.py with batchNorm=False: key -> shape, written
# out from that model's layer definitions (conv(6, 64, 7, 2), ..., deconv(1024, 512), ...).
FLOWNETS_CHECKPOINT_SHAPES = {
    "conv1.0.weight": (64, 6, 7, 7),
    "conv2.0.weight": (128, 64, 5, 5),
    "conv3.0.weight": (256, 128, 5, 5),
    "conv3_1.0.weight": (256, 256, 3, 3),
    "conv4.0.weight": (512, 256, 3, 3),
    "conv4_1.0.weight": (512, 512, 3, 3),
    "conv5.0.weight": (512, 512, 3, 3),
    "conv5_1.0.weight": (512, 512, 3, 3),
    "conv6.0.weight": (1024, 512, 3, 3),
    "conv6_1.0.weight": (1024, 1024, 3, 3),
    "deconv5.0.weight": (1024, 512, 4, 4),
    "deconv4.0.weight": (1026, 256, 4, 4),
    "deconv3.0.weight": (770, 128, 4, 4),
    "deconv2.0.weight": (386, 64, 4, 4),
    "predict_flow6.weight": (2, 1024, 3, 3),
    "predict_flow5.weight": (2, 1026, 3, 3),
    "predict_flow4.weight": (2, 770, 3, 3),
    "predict_flow3.weight": (2, 386, 3, 3),
    "predict_flow2.weight": (2, 194, 3, 3),
    "upsampled_flow6_to_5.weight": (2, 2, 4, 4),
    "upsampled_flow5_to_4.weight": (2, 2, 4, 4),
    "upsampled_flow4_to_3.weight": (2, 2, 4, 4),
    "upsampled_flow3_to_2.weight": (2, 2, 4, 4),
}
FLOWNETS_CHECKPOINT_SHAPES.update(
    {
        k.replace("weight", "bias"): v[:1]
        for k, v in FLOWNETS_CHECKPOINT_SHAPES.items()
        if k[:4] == "conv"
    }
)


def _cfg(**flownet):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR = 16
    for key, value in flownet.items():
        cfg.MODEL.FLOW.FLOWNET[key] = value
    return cfg


def _frames(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, h, w, generator=g) * 255 for _ in range(2)]


def _resnet_stride16(cfg):
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def test_flow_and_scale_map_are_at_the_feature_stride():
    torch.manual_seed(0)
    net = build_flow_net(_cfg(), 5)
    backbone = _resnet_stride16(_cfg())
    for h, w in [(64, 64), (100, 137), (77, 90), (33, 48)]:
        cur, ref = _frames(2, h, w, seed=h)
        flow, scale = net(cur, ref)
        with torch.no_grad():
            res4 = backbone(cur)["res4"]
        # The same grid as a stride-16 ResNet map of the same input: ceil(H / 16).
        assert flow.shape == (2, 2, *res4.shape[2:]) == (2, 2, -(-h // 16), -(-w // 16))
        assert scale.shape == (2, 5, *res4.shape[2:])


def test_at_initialisation_flow_is_zero_s_is_one_and_propagation_is_the_identity():
    torch.manual_seed(1)
    net = build_flow_net(_cfg(), 4)
    cur, ref = _frames(2, 70, 90, seed=2)
    flow, scale = net(cur, ref)
    assert torch.equal(flow, torch.zeros_like(flow))
    assert torch.equal(scale, torch.ones_like(scale))
    feature = torch.randn(2, 4, 5, 6)
    assert torch.equal(net.propagate(feature, cur, ref), feature)
    # S's bias is the fixed one of Sec. 3.3, not a parameter; its weights are trainable.
    scale_params = {n for n, _ in net.named_parameters() if n.startswith("scale.")}
    assert scale_params == {"scale.conv.weight"}


class _Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 2, *x.shape[2:]), self.value)


def test_flow_is_the_prediction_times_div_flow_over_the_stride():
    torch.manual_seed(3)
    for div_flow, factor in [(20.0, 2.5), (8.0, 1.0)]:
        net = build_flow_net(_cfg(DIV_FLOW=div_flow), 4)
        # DFF's Convolution5 * 2.5: flow / 20 in pixels of the half-resolution input, whose
        # stride-8 grid is the feature grid, so 20 / 8 feature pixels per unit.
        net.predict_flow2 = _Constant(1.0)
        flow, _ = net(*_frames(1, 64, 64, seed=4))
        assert torch.equal(flow, torch.full((1, 2, 4, 4), factor))


def test_input_is_normalised_half_resolution_with_the_current_frame_first():
    torch.manual_seed(5)
    net = build_flow_net(_cfg(), 4)
    seen = []
    net.conv1.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    # BGR frames (INPUT.FORMAT) of 3 x 3 pixels; the RGB weights see R, G, B.
    cur = torch.zeros(1, 3, 3, 3)
    cur[0, 0], cur[0, 1], cur[0, 2] = 0.0, 51.0, 255.0  # B, G, R
    cur[0, 2, 2, 2] = 0.0  # one dark red pixel in the bottom-right corner
    ref = torch.full((1, 3, 3, 3), 255.0)
    net(cur, ref)
    x = seen[0]
    assert x.shape == (1, 6, 2, 2)
    mean = torch.tensor([114.75, 110.16, 104.805])
    # R: 2x2 average, the partial windows at the border averaging their in-image pixels only:
    # top-left (255 * 4) / 4, bottom-right the lone dark pixel 0.
    red = (torch.tensor([[255.0, 255.0], [255.0, 0.0]]) - mean[0]) / 255
    torch.testing.assert_close(x[0, 0], red)
    torch.testing.assert_close(x[0, 1], torch.full((2, 2), (51.0 - mean[1]) / 255))
    torch.testing.assert_close(x[0, 2], torch.full((2, 2), (0.0 - mean[2]) / 255))
    torch.testing.assert_close(x[0, 3:], ((255.0 - mean) / 255).view(3, 1, 1).expand(3, 2, 2))


def test_training_reaches_every_layer_of_the_flow_network():
    torch.manual_seed(6)
    net = build_flow_net(_cfg(), 4)
    cur, ref = _frames(1, 64, 64, seed=7)
    feature = torch.randn(1, 4, 4, 4)
    net.propagate(feature, cur, ref).square().sum().backward()
    # At initialisation the flow predictions and S's weights are zero, so the first gradient
    # reaches only them; once they have moved, every layer gets one (end-to-end training).
    reached = {name for name, p in net.named_parameters() if p.grad.abs().sum() > 0}
    assert reached == {"predict_flow2.weight", "scale.conv.weight"}
    for p in [getattr(net, f"predict_flow{k}").weight for k in range(2, 7)] + [
        net.scale.conv.weight
    ]:
        nn.init.normal_(p, std=1e-3)
    net.zero_grad()
    net.propagate(feature, cur, ref).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_freeze_keeps_every_weight():
    net = build_flow_net(_cfg(), 4).freeze()
    assert not any(p.requires_grad for p in net.parameters())


def test_bad_widths_and_formats_are_refused():
    with pytest.raises(ValueError, match="WIDTH_DIVISOR=3"):
        build_flow_net(_cfg(WIDTH_DIVISOR=3), 4)
    with pytest.raises(ValueError, match="FORMAT"):
        build_flow_net(_cfg(FORMAT="YUV"), 4)
    cfg = _cfg()
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="INPUT.FORMAT='L'"):
        build_flow_net(cfg, 4)
    net = build_flow_net(_cfg(), 4)
    with pytest.raises(ValueError, match="4-channel"):
        net.propagate(torch.zeros(1, 8, 4, 4), *_frames(1, 64, 64, seed=0))


# --- checkpoints in the ClementPinard/FlowNetPytorch layout ----------------------------------


def _pinard_state_dict(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in FLOWNETS_CHECKPOINT_SHAPES.items()}


def _our_name(checkpoint_key):
    """The documented rule: the checkpoint's ``nn.Sequential`` index ``.0`` is dropped."""
    return checkpoint_key.replace(".0.", ".")


def _full_cfg(path):
    cfg = _cfg(WIDTH_DIVISOR=1)
    cfg.MODEL.FLOW.WEIGHTS = str(path)
    return cfg


def test_loads_a_clementpinard_flownets_checkpoint(tmp_path):
    state = _pinard_state_dict(seed=8)
    path = tmp_path / "flownets_EPE1.951.pth.tar"
    # As FlowNetPytorch's main.py saves it.
    torch.save(
        {"epoch": 300, "arch": "flownets", "state_dict": state, "best_EPE": 1.951, "div_flow": 20},
        path,
    )
    net = build_flow_net(_full_cfg(path), 6)
    ours = net.state_dict()
    assert len(state) == 33
    for key, value in state.items():
        assert torch.equal(ours[_our_name(key)], value), key
    assert set(ours) - {_our_name(k) for k in state} == {"scale.conv.weight"}
    assert torch.equal(ours["scale.conv.weight"], torch.zeros(6, 194, 1, 1))
    # A bare state dict loads too.
    bare = tmp_path / "bare.pth"
    torch.save(_pinard_state_dict(seed=9), bare)
    assert torch.equal(
        build_flow_net(_full_cfg(bare), 6).conv1.bias, torch.load(bare)["conv1.0.bias"]
    )


def test_bad_checkpoints_fail_naming_the_keys(tmp_path):
    path = tmp_path / "bad.pth"
    state = _pinard_state_dict(seed=10)
    del state["predict_flow3.weight"]
    state["conv1.1.running_mean"] = torch.zeros(64)  # the batch-norm variant's keys
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="missing keys: predict_flow3.weight") as info:
        build_flow_net(_full_cfg(path), 6)
    assert "unexpected keys: conv1.1.running_mean" in str(info.value)
    assert str(path) in str(info.value)

    torch.save(_pinard_state_dict(seed=10), path)
    cfg = _full_cfg(path)
    cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR = 16
    with pytest.raises(ValueError, match=r"conv1.0.weight: checkpoint \(64, 6, 7, 7\), model \(4"):
        build_flow_net(cfg, 6)

    torch.save({"state_dict": _pinard_state_dict(seed=10), "div_flow": 1}, path)
    with pytest.raises(ValueError, match="divided by 1.*DIV_FLOW is 20.0"):
        build_flow_net(_full_cfg(path), 6)


def test_flownets_is_registered():
    cfg = _cfg()
    assert cfg.MODEL.FLOW.NAME == "FlowNetS"
    assert isinstance(build_flow_net(cfg, 4), FlowNetS)
