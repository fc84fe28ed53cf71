"""The weight transfer of §3.2: a static detector's conv becomes W_z, W_r, W of STMN's cells."""

import pytest
import torch
from _testing import seeded_model, stmn_cfg
from detectron2.config import get_cfg
from detectron2.structures import Boxes

from vod_d2 import add_vod_config
from vod_d2.checkpoint import convert_checkpoint
from vod_d2.modeling.roi_heads.rfcn import rfcn_features
from vod_d2.modeling.temporal.weight_transfer import transfer_single_frame_weights

DIRECTIONS = ("forward_memory", "backward_memory")


def _stmn_cfg(cfg, **options):
    return stmn_cfg(cfg, train_offsets=(-1, 1), **options)


def _distinct(model):
    """Make every tensor of ``model`` distinguishable from a fresh initialisation."""
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    return model


def _cells(stmn):
    return [getattr(stmn.temporal_aggregation, d).cell for d in DIRECTIONS]


# ---------------------------------------------------------------- DC5: "duplicate"


def _single_frame_and_stmn(tiny_cfg):
    single = _distinct(
        seeded_model(_stmn_cfg(tiny_cfg, aggregation="STMNSingleFrameAggregation", window=(0, 0)))
    )
    return single, seeded_model(_stmn_cfg(tiny_cfg))


def test_weight_transfer_copies_the_right_tensors(tiny_cfg):
    single, stmn = _single_frame_and_stmn(tiny_cfg)
    state, report = transfer_single_frame_weights(single.state_dict(), stmn.state_dict())
    stmn.load_state_dict(state)
    assert report.mapping == "duplicate"
    conv = single.temporal_aggregation.feature_conv
    for cell in _cells(stmn):
        for w, b in zip(cell.input_conv.weight.chunk(3), cell.input_conv.bias.chunk(3)):
            assert torch.equal(w, conv.weight) and torch.equal(b, conv.bias)
    for key, value in single.backbone.state_dict().items():
        assert torch.equal(stmn.backbone.state_dict()[key], value), key
    assert report.kept_init and all(
        ".gate_conv." in k or ".candidate_conv." in k or ".residual_gate." in k
        for k in report.kept_init
    )
    assert "roi_heads.box_head.fc1.weight" in report.widened
    assert "roi_heads.box_predictor.cls_score.weight" in report.copied


def test_widened_heads_see_two_equal_memories_as_the_single_frame_feature(tiny_cfg):
    single, stmn = _single_frame_and_stmn(tiny_cfg)
    stmn.load_state_dict(transfer_single_frame_weights(single.state_dict(), stmn.state_dict())[0])
    x = torch.rand(2, 8, 5, 6)
    doubled = torch.cat([x, x], dim=1)
    for a, b in zip(
        single.proposal_generator.rpn_head([x]), stmn.proposal_generator.rpn_head([doubled])
    ):
        torch.testing.assert_close(a[0], b[0])
    pooled = torch.rand(3, 8, 7, 7)
    torch.testing.assert_close(
        single.roi_heads.box_head(pooled), stmn.roi_heads.box_head(torch.cat([pooled, pooled], 1))
    )


def test_a_plain_single_frame_detector_transfers_as_an_identity_conv(tiny_cfg):
    plain = seeded_model(_stmn_cfg(tiny_cfg, aggregation="SingleFrameAggregation", window=(0, 0)))
    width = plain.backbone.output_shape()["res5"].channels
    stmn = seeded_model(_stmn_cfg(tiny_cfg, MEMORY_CHANNELS=width))
    state, report = transfer_single_frame_weights(plain.state_dict(), stmn.state_dict())
    stmn.load_state_dict(state)
    assert report.mapping == "identity"
    features = torch.relu(torch.randn(2, width, 5, 6, generator=torch.Generator().manual_seed(8)))
    for cell in _cells(stmn):
        # W_z F = W_r F = W F = F: the static detector's map (post-ReLU) passes unchanged.
        for block in cell.project(features).chunk(3, dim=1):
            torch.testing.assert_close(block, features)
    assert any(k.endswith("rpn_head.conv.weight") for k in report.widened)
    # Narrower memories cannot be an identity: the error names the way out.
    narrow = seeded_model(_stmn_cfg(tiny_cfg))
    with pytest.raises(KeyError, match="--source-conv"):
        transfer_single_frame_weights(plain.state_dict(), narrow.state_dict())


def test_weight_transfer_errors_name_the_conv(tiny_cfg):
    single, stmn = _single_frame_and_stmn(tiny_cfg)
    source = single.state_dict()
    with pytest.raises(KeyError, match="backbone.res5"):
        transfer_single_frame_weights(source, stmn.state_dict(), "backbone.res5.0.conv9")
    source["temporal_aggregation.feature_conv.weight"] = torch.zeros(8, 3, 1, 1)
    with pytest.raises(ValueError, match="temporal_aggregation.feature_conv.weight"):
        transfer_single_frame_weights(source, stmn.state_dict())
    # A width that is neither M nor 2 M.
    source["temporal_aggregation.feature_conv.weight"] = torch.zeros(12, 256, 3, 3)
    with pytest.raises(ValueError, match="output channels"):
        transfer_single_frame_weights(source, stmn.state_dict())
    with pytest.raises(ValueError, match="STMNAggregation"):
        transfer_single_frame_weights(source, single.state_dict())


def test_convert_checkpoint_writes_a_loadable_checkpoint(tiny_cfg, tmp_path):
    single, _ = _single_frame_and_stmn(tiny_cfg)
    torch.save({"model": single.state_dict(), "iteration": 9}, tmp_path / "single.pth")
    cfg = _stmn_cfg(tiny_cfg)
    report = convert_checkpoint(cfg, str(tmp_path / "single.pth"), str(tmp_path / "stmn.pth"))
    assert report.mapping == "duplicate"
    checkpoint = torch.load(tmp_path / "stmn.pth", weights_only=True)
    assert set(checkpoint) == {"model"}
    weight = checkpoint["model"]["temporal_aggregation.backward_memory.cell.input_conv.weight"]
    torch.testing.assert_close(
        weight, single.temporal_aggregation.feature_conv.weight.repeat(3, 1, 1, 1)
    )
    seeded_model(cfg).load_state_dict(checkpoint["model"])


# ---------------------------------------------------------------- R-FCN: "split"


def _rfcn_pair(dilation):
    """The synthetic static R-FCN and the STMN built to take its weights, at test size."""
    models = []
    for path in ("configs/synthetic/rfcn.yaml", "configs/synthetic/stmn_rfcn.yaml"):
        cfg = get_cfg()
        add_vod_config(cfg)
        cfg.merge_from_file(path)
        cfg.MODEL.RFCN.REDUCTION_DILATION = dilation
        cfg.MODEL.STMN.DILATION = dilation
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16  # res5: 128 channels
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
        cfg.MODEL.RFCN.REDUCTION_CHANNELS = 16
        cfg.MODEL.STMN.MEMORY_CHANNELS = 8
        cfg.MODEL.RFCN.GROUP_SIZE = 3
        models.append(seeded_model(cfg))
    return _distinct(models[0]), models[1]


@pytest.mark.parametrize("dilation", [1, 2])
def test_rfcn_reduction_splits_into_the_two_memories(dilation):
    static, stmn = _rfcn_pair(dilation)
    state, report = transfer_single_frame_weights(static.state_dict(), stmn.state_dict())
    stmn.load_state_dict(state)
    assert report.mapping == "split"
    reduction = static.backbone.reduction
    res5 = torch.relu(torch.randn(2, 128, 7, 9, generator=torch.Generator().manual_seed(3)))
    reduced = reduction(res5)
    for half, cell in enumerate(_cells(stmn)):
        # The forward cell takes the reduction's first 8 channels, the backward its last 8,
        # with its kernel and dilation: W_z F = W_r F = W F = that half of the reduction.
        for block in cell.project(res5).chunk(3, dim=1):
            torch.testing.assert_close(block, reduced[:, 8 * half : 8 * (half + 1)])
    for key, value in stmn.backbone.state_dict().items():
        assert torch.equal(value, static.backbone.state_dict()[key]), key
    assert "backbone.reduction.weight" not in stmn.state_dict()


def test_rfcn_heads_on_both_memories_are_the_static_heads_on_their_half():
    static, stmn = _rfcn_pair(1)
    state, report = transfer_single_frame_weights(static.state_dict(), stmn.state_dict())
    stmn.load_state_dict(state)
    # The static heads each read half of the 16-channel reduction (RPN the first, R-FCN the
    # second); STMN's read all of [M_forward, M_backward], which equal those halves at the start.
    assert "proposal_generator.rpn_head.objectness_logits.weight" in report.widened
    assert "roi_heads.box_predictor.cls_score.weight" in report.widened
    x = torch.relu(torch.randn(2, 16, 6, 7, generator=torch.Generator().manual_seed(4)))
    for a, b in zip(static.proposal_generator.rpn_head([x]), stmn.proposal_generator.rpn_head([x])):
        torch.testing.assert_close(a[0], b[0])
    boxes = [Boxes(torch.tensor([[4.0, 6.0, 60.0, 50.0], [20.0, 8.0, 90.0, 70.0]]))] * 2
    for a, b in zip(
        static.roi_heads.box_predictor(rfcn_features(x, True), boxes),
        stmn.roi_heads.box_predictor(x, boxes),
    ):
        torch.testing.assert_close(a, b)


def test_auto_source_conv_prefers_the_static_stmn_conv(tiny_cfg):
    single, stmn = _single_frame_and_stmn(tiny_cfg)
    source = dict(single.state_dict())
    # A checkpoint with both convs: "auto" takes STMNSingleFrameAggregation's.
    source["backbone.reduction.weight"] = torch.zeros(16, 256, 3, 3)
    state, report = transfer_single_frame_weights(source, stmn.state_dict())
    assert report.mapping == "duplicate"
    conv = single.temporal_aggregation.feature_conv.weight
    weight = state["temporal_aggregation.forward_memory.cell.input_conv.weight"]
    assert torch.equal(weight, conv.repeat(3, 1, 1, 1))
    # Named explicitly, the reduction (2 M = 16 channels) splits between the memories.
    state, report = transfer_single_frame_weights(source, stmn.state_dict(), "backbone.reduction")
    assert report.mapping == "split"
    assert state["temporal_aggregation.forward_memory.cell.input_conv.weight"].abs().max() == 0
    # Or nothing at all.
    _, report = transfer_single_frame_weights(source, stmn.state_dict(), "")
    assert report.mapping == "" and not report.converted
