"""
The streaming-core redesign keeps the detections of the shipped methods (see _golden.py): the
streaming path, which evaluation, the predictor and the demo use, on the same weights and video.
"""

from pathlib import Path

import pytest
import torch
from _golden import GOLDEN_CONFIGS, detections, golden_model, golden_video
from _testing import unmatched_detections

from vod_d2.engine import run_on_video

GOLDEN = torch.load(Path(__file__).parent / "fixtures" / "golden_detections.pt")
# The detections are the golden ones up to float reordering. Another CPU (its vector width) or
# thread count sums in another order, which changes a float32 result by about an ulp (6e-8 of
# it), amplified through the network: across AVX-512, AVX2 and plain kernels, oneDNN or not and
# 1-4 threads, box coordinates moved by up to 1e-3 px (a coordinate's error grows with its
# proposal's size, up to the frame's 160 px), scores by up to 3.7e-6. Allowed: 5e-3 px and 5e-5.
# A real change moves detections by far more: a 4x4-pixel black patch on one of the 14 frames
# moves some score by 1.3e-3 to 0.16.
BOX_ATOL = 5e-3
SCORE_ATOL = 5e-5


@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_detections_are_those_of_the_pre_redesign_core(name):
    torch.manual_seed(0)
    model = golden_model(name)
    with torch.no_grad():
        got = detections([output for _, output in run_on_video(model, golden_video())])
    assert len(got) == len(GOLDEN[name])
    for t, (frame, gold) in enumerate(zip(got, GOLDEN[name])):
        assert len(frame[0]) == len(gold[0]), f"frame {t}"
        assert torch.all(frame[1][:-1] >= frame[1][1:]), f"frame {t}: not sorted by score"
        missing = unmatched_detections(frame, gold, BOX_ATOL, SCORE_ATOL)
        assert not missing, (
            f"frame {t}: no detection equals {len(missing)} of the golden ones, the first (box, "
            f"score): {missing[0]}"
        )
