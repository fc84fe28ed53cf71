"""
Every video method starts from a single-frame checkpoint of its head (MODEL.WEIGHTS) as that
checkpoint's detector: the same detections at iteration 0, within float tolerance.
"""

import logging

import pytest
import torch
from _testing import random_video, synthetic_cfg, unmatched_detections
from detectron2.modeling import build_model

from vod_d2.checkpoint import VideoCheckpointer, new_parameter_names
from vod_d2.engine import run_on_video
from vod_d2.engine.optimizer import build_optimizer

# The same detections up to float reordering: STMN's RPN and box head read both memories with
# halved weights, twice the terms of the single frame's sums. Across AVX-512, AVX2 and plain
# kernels, box coordinates moved by up to 1.1e-3 px and scores by up to 2.6e-5 (a confident
# detection's logits are large); a wrong or missing weight changes them by far more.
BOX_ATOL = 5e-3
SCORE_ATOL = 1e-4
# method config -> (single-frame config of its head, the frames that must match: None for all,
# "key" for the key frames only: non-key frames are propagated, by the papers' design).
METHODS = {
    "ssn": ("single_frame", None),
    "stsn": ("single_frame", None),
    "stmn": ("single_frame", None),
    "ssn_rfcn": ("rfcn", None),
    "stsn_rfcn": ("rfcn", None),
    "stmn_rfcn": ("rfcn", None),
    "sparsevod": ("sparse_rcnn", None),
    "lsts": ("rfcn", "key"),
    "impression": ("rfcn", "key"),
    "dff": ("rfcn", "key"),
}


def _cfg(name, **opts):
    """The synthetic config at the tests' size, keeping every detection (for comparison)."""
    opts = {"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 20, **opts}
    return synthetic_cfg(name, **opts)


def _detections(model, video):
    """
    Per frame: whether the model runs its full network on it, its Instances, and what its
    detection head reads (R-CNN heads: the feature maps; Sparse R-CNN: its last stage's class
    logits, TFE and SPFA being inside it), flattened.
    """
    read = []
    if hasattr(model, "roi_heads"):

        def record(module, args):
            read.append(torch.cat([f.flatten() for f in args[1].values()]))

        hook = model.roi_heads.register_forward_pre_hook(record)
    else:

        def record(module, args, outputs):
            read.append(outputs[-1].logits.flatten())

        hook = model.head.register_forward_hook(record)
    with torch.no_grad():
        stream = run_on_video(model, video, len(video), video.__getitem__)
        outputs = [out["instances"] for _, out in stream]
    hook.remove()
    return [
        (model.frame_kind(i, len(video)) == "full", x, r)
        for i, (x, r) in enumerate(zip(outputs, read))
    ]


@pytest.fixture(scope="module")
def video():
    return random_video(12, seed=3)


def _single_frame(method, video, tmp_path):
    """The single-frame checkpoint of ``method``'s head (random weights), saved, and its
    detections on ``video``."""
    head, _ = METHODS[method]
    torch.manual_seed(0)
    # The single-frame detector with the method's test-time NMS (STSN's is 0.3).
    nms = _cfg(method).MODEL.ROI_HEADS.NMS_THRESH_TEST
    single = build_model(_cfg(head, **{"MODEL.ROI_HEADS.NMS_THRESH_TEST": nms})).eval()
    weights = str(tmp_path / "single_frame.pth")
    torch.save({"model": single.state_dict()}, weights)
    return single, weights, _detections(single, video)


def _fields(instances):
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def _assert_same_detections(method, model, video, expected):
    """``model`` detects what the single frame did (``expected``), and its head reads the same
    features, on every frame its method claims (all, or the key frames)."""
    _, frames = METHODS[method]
    compared = 0
    for t, ((full, got, read), (_, want, single_read)) in enumerate(
        zip(_detections(model, video), expected)
    ):
        if frames == "key" and not full:
            continue
        compared += 1
        missing = unmatched_detections(_fields(got), _fields(want), BOX_ATOL, SCORE_ATOL)
        assert len(got) == len(want) and not missing, (method, t, missing[:1])
        if read.numel() == 2 * single_read.numel():  # STMN's two memories of a plain detector
            single_read = single_read.repeat(2)
        torch.testing.assert_close(read, single_read, atol=1e-5, rtol=1e-5)
    assert compared >= 2


@pytest.mark.parametrize("method", METHODS)
def test_a_video_method_starts_as_its_single_frame_checkpoint(method, video, tmp_path, caplog):
    _, frames = METHODS[method]
    single, weights, expected = _single_frame(method, video, tmp_path)

    def start(**opts):
        cfg = _cfg(method, **{"MODEL.WEIGHTS": weights, **opts})
        torch.manual_seed(1)
        model = build_model(cfg).eval()
        with caplog.at_level(logging.INFO, logger="vod_d2"):
            VideoCheckpointer(model, cfg=cfg).load(weights)
        return cfg, model

    cfg, model = start()
    assert "start at their initialisation" in caplog.text
    assert "not found in the checkpoint" not in caplog.text  # that one line, not a list
    _assert_same_detections(method, model, video, expected)

    # The temporal parts are what the checkpoint lacks: they start fresh and train faster.
    new = new_parameter_names(model, single.state_dict())
    assert new and all(n not in single.state_dict() for n in new)
    cfg.defrost()
    cfg.SOLVER.NEW_MODULE_LR_FACTOR = 10.0
    groups = build_optimizer(cfg, model).param_groups
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # (LSTS's sampling locations keep their own rate, BASE_LR x MODEL.LSTS.LOCATIONS_LR_MULT.)
    trained_new = [n for n in new if named[n].requires_grad and not n.endswith("offsets")]
    assert trained_new and all(rates[id(named[n])] >= 10 * cfg.SOLVER.BASE_LR for n in trained_new)
    old = [n for n, p in named.items() if n not in new and p.requires_grad and "offsets" not in n]
    assert all(rates[id(named[n])] <= cfg.SOLVER.BASE_LR * cfg.SOLVER.BIAS_LR_FACTOR for n in old)

    # Without the identity start the same checkpoint gives other detections: the test fails
    # when a module's zero start is removed.
    if method not in ("ssn", "ssn_rfcn", "dff"):  # no new aggregation to start closed
        _, paper = start(**{"MODEL.VIDEO.IDENTITY_INIT": False})
        differs = [
            read.shape != single_read.shape
            or not torch.allclose(read, single_read, atol=1e-3, rtol=1e-3)
            for (full, _, read), (_, _, single_read) in zip(_detections(paper, video), expected)
            if full or frames != "key"
        ]
        assert any(differs), method


# One method per gated module family: STSN's and SSN's sampling, STMN's memory, LSTS's SRFU and
# DFA, Impression's memory, SparseVOD's TFE (scheduled, the default, is tested above).
@pytest.mark.parametrize("kind", ["channel", "position"])
@pytest.mark.parametrize(
    "method", ["ssn_rfcn", "stsn_rfcn", "stmn_rfcn", "lsts", "impression", "sparsevod"]
)
def test_every_gate_kind_starts_as_the_single_frame_checkpoint(method, kind, video, tmp_path):
    _, weights, expected = _single_frame(method, video, tmp_path)
    cfg = _cfg(method, **{"MODEL.WEIGHTS": weights, "MODEL.VIDEO.GATE.KIND": kind})
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    VideoCheckpointer(model, cfg=cfg).load(weights)
    _assert_same_detections(method, model, video, expected)
