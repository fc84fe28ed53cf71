"""
The streaming-core redesign keeps the detections of the shipped methods (see _golden.py): the
streaming path, which evaluation, the predictor and the demo use, on the same weights and video.
"""

from pathlib import Path

import pytest
import torch
from _golden import GOLDEN_CONFIGS, detections, golden_model, golden_video

from vod_d2.engine import run_on_video

GOLDEN = torch.load(Path(__file__).parent / "fixtures" / "golden_detections.pt")


@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_detections_are_those_of_the_pre_redesign_core(name):
    torch.manual_seed(0)
    model = golden_model(name)
    with torch.no_grad():
        got = detections([output for _, output in run_on_video(model, golden_video())])
    assert len(got) == len(GOLDEN[name])
    for t, ((boxes, scores, classes), (gold_boxes, gold_scores, gold_classes)) in enumerate(
        zip(got, GOLDEN[name])
    ):
        torch.testing.assert_close(scores, gold_scores, rtol=0, atol=1e-6, msg=f"frame {t}")
        torch.testing.assert_close(boxes, gold_boxes, rtol=0, atol=1e-4, msg=f"frame {t}")
        assert torch.equal(classes, gold_classes), f"frame {t}"
