"""
The streaming-core redesign keeps the detections of the shipped methods (see _golden.py): the
streaming path, which evaluation, the predictor and the demo use, on the same weights and video.
"""

from pathlib import Path

import pytest
import torch
from _golden import GOLDEN_CONFIGS, detections, golden_model, golden_video
from scipy.optimize import linear_sum_assignment

from vod_d2.engine import run_on_video

GOLDEN = torch.load(Path(__file__).parent / "fixtures" / "golden_detections.pt")
# The detections are the golden ones up to float reordering. Another CPU (its vector width) or
# thread count sums in another order, which changes a float32 result by about an ulp (6e-8 of
# it), amplified through the network: across AVX-512, AVX2 and plain kernels, oneDNN or not and
# 1-4 threads, a box coordinate moved by up to 1.3e-5 of the box's size plus the coordinate
# (1e-3 px), a score by up to 3.7e-6. A box is its proposal's coordinates plus deltas times
# sizes, so its error scales with both. Allowed: 1e-4 of that (1e-2 px for a 50-px box at 50 px)
# and 5e-5 in score. A real change moves detections by far more: a 4x4-pixel black patch on one
# of the 14 frames moves some score by 1.3e-3 to 0.16.
BOX_RTOL = 1e-4
SCORE_ATOL = 5e-5


def _unmatched(got, gold):
    """
    The golden detections of a frame that no detection equals (same class, box and score within
    the tolerances), one to one. Detections whose scores tie within the tolerance may come out
    in either order, so they are matched, not compared by index.

    Args:
        got, gold: (boxes (N, 4), scores (N,), classes (N,)) of a frame.
    """
    (boxes, scores, classes), (gold_boxes, gold_scores, gold_classes) = got, gold
    sizes = (gold_boxes[:, 2:] - gold_boxes[:, :2]).amax(1, keepdim=True)
    allowed = BOX_RTOL * (sizes + gold_boxes.abs())
    equal = ((boxes[None] - gold_boxes[:, None]).abs() <= allowed[:, None]).all(2)
    equal &= (scores[None] - gold_scores[:, None]).abs() <= SCORE_ATOL
    equal &= classes[None] == gold_classes[:, None]
    rows, cols = linear_sum_assignment(-equal.double().numpy())
    return [(gold_boxes[i], gold_scores[i].item()) for i, j in zip(rows, cols) if not equal[i, j]]


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
        missing = _unmatched(frame, gold)
        assert not missing, (
            f"frame {t}: no detection equals {len(missing)} of the golden ones, the first (box, "
            f"score): {missing[0]}"
        )
