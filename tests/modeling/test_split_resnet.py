import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from vod_d2 import add_vod_config
from vod_d2.modeling.backbone import SplitResNet

SYNTHETIC_BASE = "configs/synthetic/Base-synthetic.yaml"


def _cfg(depth=None, synthetic=False, out_features=("res5",)):
    cfg = get_cfg()
    add_vod_config(cfg)
    if synthetic:
        cfg.merge_from_file(SYNTHETIC_BASE)
    else:
        cfg.MODEL.RESNETS.DEPTH = depth
        cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
        cfg.MODEL.RESNETS.RES5_DILATION = 2
    cfg.MODEL.BACKBONE.NAME = "build_split_resnet_backbone"
    return cfg


def _resnet(cfg, seed=0):
    torch.manual_seed(seed)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def _images(seed=0, size=48):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _upto_cut(resnet, x, stage, blocks):
    """The ResNet's own modules run up to (and including) block ``blocks - 1`` of ``stage``."""
    x = resnet.stem(x)
    for name in resnet.stage_names:
        for i, block in enumerate(getattr(resnet, name).children()):
            if name == stage and i == blocks:
                return x
            x = block(x)
        if name == stage:
            return x


CASES = [
    ("R-50", dict(depth=50), "res4", 4),
    ("R-101", dict(depth=101), "res4", 4),
    ("synthetic", dict(synthetic=True), "res4", 4),
    ("R-50 res4 first block", dict(depth=50), "res4", 1),
    ("R-50 whole res4", dict(depth=50), "res4", 6),
    ("R-50 res3", dict(depth=50), "res3", 2),
    ("R-50 res4 and res5 out", dict(depth=50, out_features=("res4", "res5")), "res4", 4),
]


@pytest.mark.parametrize("pre_activation", [True, False])
@pytest.mark.parametrize("name,kwargs,stage,blocks", CASES, ids=[c[0] for c in CASES])
def test_light_then_rest_is_the_whole_resnet_exactly(name, kwargs, stage, blocks, pre_activation):
    resnet = _resnet(_cfg(**kwargs))
    split = SplitResNet(resnet, stage=stage, blocks=blocks, pre_activation=pre_activation)
    with torch.no_grad():
        for seed in range(2):
            x = _images(seed)
            whole = resnet(x)
            low = split.forward_light(x)
            rest = split.forward_rest(low)
            assert rest.keys() == whole.keys() == set(resnet._out_features)
            for key in whole:
                assert torch.equal(rest[key], whole[key])
                assert torch.equal(split(x)[key], whole[key])
            # The light part is the ResNet up to the cut, before the cut block's ReLU or after.
            expected = _upto_cut(resnet, x, stage, blocks)
            assert torch.equal(F.relu(low) if pre_activation else low, expected)
            assert (low < 0).any() == pre_activation


def test_pretrained_weights_load_unchanged():
    cfg = _cfg(depth=50)
    pretrained = _resnet(cfg, seed=1)
    torch.manual_seed(2)
    split = build_backbone(cfg).eval()
    assert isinstance(split, SplitResNet)
    assert list(split.state_dict()) == list(pretrained.state_dict())
    split.load_state_dict(pretrained.state_dict(), strict=True)
    x = _images(3)
    with torch.no_grad():
        assert torch.equal(split(x)["res5"], pretrained(x)["res5"])


@pytest.mark.parametrize(
    "kwargs,stage,blocks,channels,stride",
    [
        (dict(depth=101), "res4", 4, 1024, 16),
        (dict(depth=50), "res3", 2, 512, 8),
        (dict(synthetic=True), "res4", 4, 128, 16),  # R-50 depth at 1/8 width
    ],
)
def test_low_level_shape(kwargs, stage, blocks, channels, stride):
    split = SplitResNet(_resnet(_cfg(**kwargs)), stage=stage, blocks=blocks)
    assert split.low_level_shape() == ShapeSpec(channels=channels, stride=stride)
    with torch.no_grad():
        low = split.forward_light(_images(size=64))
    assert low.shape == (2, channels, 64 // stride, 64 // stride)
    assert split.output_shape() == _resnet(_cfg(**kwargs)).output_shape()


def test_each_block_runs_once_in_one_part():
    # res2 3, res3 4, res4 23, res5 3 blocks; the light part is res2, res3 and res4.0-3.
    split = SplitResNet(_resnet(_cfg(depth=101)), stage="res4", blocks=4)
    calls = []
    for name in split.stage_names:
        for i, block in enumerate(getattr(split, name).children()):
            block.register_forward_hook(lambda *_, key=f"{name}.{i}": calls.append(key))
    split.res4[3].conv3.register_forward_hook(lambda *_: calls.append("res4.3.conv3"))
    x = _images(size=32)
    with torch.no_grad():
        low = split.forward_light(x)
        light, calls[:] = list(calls), []
        split.forward_rest(low)
        rest = list(calls)
    # The cut block is run through its layers (to stop before its ReLU), not called as a whole.
    assert light == [f"res2.{i}" for i in range(3)] + [f"res3.{i}" for i in range(4)] + [
        f"res4.{i}" for i in range(3)
    ] + ["res4.3.conv3"]
    assert rest == [f"res4.{i}" for i in range(4, 23)] + [f"res5.{i}" for i in range(3)]


def test_bad_cuts_are_refused():
    resnet = _resnet(_cfg(depth=50))
    with pytest.raises(ValueError, match="LOW_LEVEL_STAGE"):
        SplitResNet(resnet, stage="res6")
    for blocks in (0, 7):
        with pytest.raises(ValueError, match="LOW_LEVEL_BLOCKS"):
            SplitResNet(resnet, stage="res4", blocks=blocks)
    cfg = _cfg(depth=50)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res5"]
    with pytest.raises(ValueError, match=r"\['res3'\] lie inside the light part"):
        SplitResNet(_resnet(cfg), stage="res4", blocks=4)
    cfg = _cfg(depth=50)
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    with pytest.raises(ValueError, match="LOW_LEVEL_PRE_ACTIVATION"):
        SplitResNet(_resnet(cfg), stage="res4", blocks=4)
    SplitResNet(_resnet(cfg), stage="res4", blocks=4, pre_activation=False)
