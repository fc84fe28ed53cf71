"""make_online: every method's causal variant detects each frame as it arrives, from the past."""

import pytest
import torch
from _testing import random_video, synthetic_cfg
from detectron2.modeling import build_model

from vod_d2 import make_online

METHODS = ("stsn", "stmn", "stsn_rfcn", "stmn_rfcn", "sparsevod", "impression", "lsts", "dff")


def _results_as_frames_arrive(cfg, video):
    """Per frame pushed, the indices of the frames whose results came out."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.reset(len(video))
    return [[meta["frame_idx"] for meta, _ in model.step(frame)] for frame in video]


@pytest.mark.parametrize("name", METHODS)
def test_the_online_variant_answers_every_frame_as_it_arrives(name):
    video = random_video(12, seed=2)
    cfg = synthetic_cfg(name)
    if name in ("stsn", "stmn", "stsn_rfcn", "stmn_rfcn", "impression"):
        # The offline variant waits for a look-ahead (SparseVOD's reads frames ahead instead).
        assert _results_as_frames_arrive(cfg, video) != [[t] for t in range(12)]
    changed = make_online(cfg)
    assert changed or name in ("lsts", "dff")  # LSTS and DFF are online as the papers run them
    assert _results_as_frames_arrive(cfg, video) == [[t] for t in range(12)]
    assert make_online(cfg) == {}  # idempotent


def test_window_methods_keep_their_number_of_frames_in_the_past():
    cfg = synthetic_cfg("stmn")
    before, after = cfg.MODEL.VIDEO.TEST_WINDOW
    cfg.TEST.SEQ_NMS.ENABLED = True
    changed = make_online(cfg)
    assert tuple(cfg.MODEL.VIDEO.TEST_WINDOW) == (before + after, 0)
    assert changed["TEST.SEQ_NMS.ENABLED"] == (True, False)
