"""
How many ground-truth objects of a video a detector found: each object counts once when a
detection of its frame, of its class, overlaps it at IoU >= 0.5 (the detections of a frame are
matched greedily by score, one object each, as in the VID devkit). The main command prints it
for the generated demo video::

    python -m vod_d2.evaluation.recall --ground-truth demo_gt.json --detections demo.json

Both files are lists of COCO-style dicts with ``frame_idx``, ``category_id`` and ``bbox``
(XYWH, pixels); the detections also have ``score`` (``demo/demo.py --json`` writes them, and
:func:`vod_d2.data.synthetic.write_synthetic_video` the ground truth).
"""

import argparse
import json
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import torch
from torchvision.ops import box_iou

__all__ = ["detection_recall"]


def _by_frame(items: Sequence[Dict]) -> Dict[int, List[Dict]]:
    frames = defaultdict(list)
    for item in items:
        frames[int(item["frame_idx"])].append(item)
    return frames


def _xyxy(items: Sequence[Dict]) -> torch.Tensor:
    boxes = torch.tensor([item["bbox"] for item in items], dtype=torch.float64).view(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def detection_recall(
    ground_truth: Sequence[Dict], detections: Sequence[Dict], iou: float = 0.5
) -> Tuple[int, int]:
    """
    Args:
        ground_truth: the video's objects (``frame_idx``, ``category_id``, ``bbox`` XYWH).
        detections: its detections (the same keys and ``score``).
        iou: the overlap an object needs.

    Returns:
        (found, total): objects detected with the right class at IoU >= ``iou``, and all.
    """
    found = 0
    detected = _by_frame(detections)
    for frame, objects in _by_frame(ground_truth).items():
        candidates = sorted(detected.get(frame, []), key=lambda d: -d["score"])
        if not candidates:
            continue
        overlaps = box_iou(_xyxy(candidates), _xyxy(objects))
        same_class = torch.tensor(
            [[d["category_id"] == o["category_id"] for o in objects] for d in candidates]
        )
        overlaps = torch.where(same_class, overlaps, torch.zeros_like(overlaps))
        taken = torch.zeros(len(objects), dtype=torch.bool)
        for row in overlaps:
            row = torch.where(taken, torch.zeros_like(row), row)
            best = int(row.argmax())
            if row[best] >= iou:
                taken[best] = True
        found += int(taken.sum())
    return found, len(ground_truth)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--ground-truth", required=True, help="json of the video's objects")
    parser.add_argument("--detections", required=True, help="json of its detections")
    parser.add_argument("--iou", type=float, default=0.5, help="overlap needed (default 0.5)")
    args = parser.parse_args(argv)
    with open(args.ground_truth) as f:
        ground_truth = json.load(f)
    with open(args.detections) as f:
        detections = json.load(f)
    found, total = detection_recall(ground_truth, detections, args.iou)
    share = 100.0 * found / max(total, 1)
    print(
        f"{found} of {total} ground-truth objects ({share:.1f}%) detected with the right class "
        f"at IoU >= {args.iou}"
    )


if __name__ == "__main__":
    main()
