import pickle
import re

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone import build_resnet_backbone

from vod_d2 import add_vod_config
from vod_d2.modeling.backbone import RFCNResNet

SYNTHETIC_CONFIG = "configs/synthetic/rfcn.yaml"
REDUCTION = {"reduction.weight", "reduction.bias"}


def _cfg(**overrides):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(SYNTHETIC_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _resnet(cfg):
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_reduction_of_a_stride_16_res5_is_the_only_output():
    cfg = _cfg(**{"MODEL.RFCN.REDUCTION_DILATION": 6})
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    assert isinstance(backbone, RFCNResNet)
    assert backbone.output_shape() == {"res5_reduced": ShapeSpec(channels=256, stride=16)}
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
        res5 = super(RFCNResNet, backbone).forward(x)["res5"]
        expected = F.relu(
            F.conv2d(res5, backbone.reduction.weight, backbone.reduction.bias, 1, 6, 6)
        )
    assert list(out) == ["res5_reduced"] and out["res5_reduced"].shape == (2, 256, 4, 6)
    assert torch.allclose(out["res5_reduced"], expected)
    assert res5.shape[1] == 256 and backbone.reduction.dilation == (6, 6)


def test_parameter_names_are_detectron2_resnets():
    for overrides in ({}, {"MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, True]}):
        cfg = _cfg(**overrides)
        ours = build_backbone(cfg).state_dict()
        theirs = _resnet(cfg).state_dict()
        assert set(ours) == set(theirs) | REDUCTION, overrides
        for name, value in theirs.items():
            assert ours[name].shape == value.shape, name


def test_freeze_at_freezes_the_same_layers_as_detectron2():
    cfg = _cfg(**{"MODEL.BACKBONE.FREEZE_AT": 2, "MODEL.RESNETS.NORM": "FrozenBN"})
    ours = dict(build_backbone(cfg).named_parameters())
    theirs = dict(_resnet(cfg).named_parameters())
    for name, p in theirs.items():
        assert ours[name].requires_grad == p.requires_grad, name
    assert (
        not ours["stem.conv1.weight"].requires_grad
        and not ours["res2.0.conv1.weight"].requires_grad
    )
    assert ours["res3.0.conv1.weight"].requires_grad and ours["reduction.weight"].requires_grad


def _caffe2_name(name):
    """Inverse of detectron2's ``convert_basic_c2_names`` for a ResNet (the MSRA .pkl names)."""
    name = re.sub(r"^stem\.conv1\.norm\.", "res_conv1.norm.", name)
    name = re.sub(r"^stem\.", "", name)
    for ours, theirs in (("shortcut", "branch1"), ("conv1", "branch2a"), ("conv2", "branch2b")):
        name = name.replace(f".{ours}.", f".{theirs}.")
    name = name.replace(".conv3.", ".branch2c.")
    name = name.replace(".norm.weight", ".bn.s").replace(".norm.bias", ".bn.b")
    name = re.sub(r"\.weight$", ".w", name)
    return name.replace(".", "_")


def test_imagenet_weights_in_caffe2_format_load_into_the_resnet(tmp_path):
    cfg = _cfg(**{"MODEL.RESNETS.NORM": "FrozenBN"})
    torch.manual_seed(1)
    pretrained = _resnet(cfg)
    # Like MSRA's R-50.pkl / R-101.pkl: Caffe2 blob names, conv weights and BN scale/bias only.
    blobs = {}
    for name, value in pretrained.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            continue
        blobs[_caffe2_name(name)] = torch.randn(value.shape).numpy()
    assert "res2_0_branch2a_w" in blobs and "res_conv1_bn_s" in blobs and "conv1_w" in blobs
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(blobs))

    torch.manual_seed(2)
    model = build_model(cfg)
    reduction = model.backbone.reduction.weight.clone()
    DetectionCheckpointer(model).load(str(path))
    state = model.backbone.state_dict()
    for name in pretrained.state_dict():
        if name.endswith(("running_mean", "running_var")):
            continue
        expected = torch.from_numpy(blobs[_caffe2_name(name)])
        assert torch.equal(state[name], expected), name
    assert torch.equal(model.backbone.reduction.weight, reduction)


def test_only_res5_can_be_reduced():
    cfg = _cfg(**{"MODEL.RESNETS.OUT_FEATURES": ["res4", "res5"]})
    with pytest.raises(ValueError, match="MODEL.RESNETS.OUT_FEATURES"):
        build_backbone(cfg)


def test_res4s_last_blocks_turn_deformable_and_start_as_the_plain_blocks():
    plain = _cfg()
    deformable = _cfg(**{"MODEL.RFCN.DEFORM_RES4_LAST_BLOCKS": 2})
    torch.manual_seed(0)
    a = build_backbone(plain).eval()
    b = build_backbone(deformable).eval()
    offsets = sorted(n for n, _ in b.named_modules() if n.endswith("conv2_offset"))
    assert offsets == ["res4.4.conv2_offset", "res4.5.conv2_offset"]
    # Same names for every other parameter: the plain backbone's weights load, and with the
    # offsets at zero the deformable blocks compute what the plain ones do.
    missing, unexpected = b.load_state_dict(a.state_dict(), strict=False)
    assert not unexpected and all("conv2_offset" in k for k in missing)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(b(x)["res5_reduced"], a(x)["res5_reduced"])
