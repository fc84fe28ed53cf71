"""
Time Seq-NMS on an ImageNet VID-like video on CPU.

The synthetic detections imitate a detector's raw output on a VID clip: a few objects move
smoothly across the frame; around each, the detector fires boxes in its true class and in a few
confused classes, several jittered boxes per class, with scores that flicker; the rest of the
per-frame budget is low-score clutter of random classes spread over the image.

    python benchmarks/seq_nms.py                      # 300 frames x 300 boxes, 30 classes
    python benchmarks/seq_nms.py --frames 100 --repeats 1
"""

import argparse
import time

import torch

from vod_d2.postprocessing import seq_nms

WIDTH, HEIGHT = 1280, 720


def synthetic_video_detections(
    num_frames: int, boxes_per_frame: int, num_classes: int, num_objects: int, seed: int
):
    """
    Returns:
        tuple: lists over frames of boxes (N, 4) XYXY, scores (N,) and labels (N,), N being
        ``boxes_per_frame``.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    # Object tracks: smooth paths (a straight drift plus a slow sinusoid), sizes 80-300 px.
    t = torch.arange(num_frames, dtype=torch.float32)[:, None]
    start = rand(num_objects, 2) * torch.tensor([WIDTH, HEIGHT])
    drift = (rand(num_objects, 2) - 0.5) * 4.0
    phase, period = rand(num_objects, 1) * 6.28, 40.0 + rand(num_objects, 1) * 80.0
    centers = start + drift * t[..., None] + 30.0 * torch.sin(t / period.T + phase.T)[..., None]
    sizes = (80.0 + rand(num_objects, 2) * 220.0).expand(num_frames, -1, -1)
    true_class = torch.randint(num_classes, (num_objects,), generator=g)

    confused, dups = 8, 4  # classes per object besides the true one; boxes per (object, class)
    obj_classes = torch.cat(
        [true_class[:, None], torch.randint(num_classes, (num_objects, confused), generator=g)], 1
    )
    num_obj_boxes = num_objects * (confused + 1) * dups
    if num_obj_boxes > boxes_per_frame:
        raise ValueError(f"{num_obj_boxes} object boxes do not fit in {boxes_per_frame} per frame")
    # Per object/class/duplicate: a fixed offset plus per-frame jitter, in units of the size.
    shape = (num_objects, confused + 1, dups)
    offsets = (rand(*shape, 4) - 0.5) * 0.3
    base_score = torch.cat(
        [0.6 + 0.35 * rand(num_objects, 1), 0.05 + 0.35 * rand(num_objects, confused)], 1
    )

    boxes, scores, labels = [], [], []
    for f in range(num_frames):
        c = centers[f][:, None, None, :]
        s = sizes[f][:, None, None, :]
        jitter = (rand(*shape, 4) - 0.5) * 0.08
        half = torch.cat([-s / 2, s / 2], -1)
        obj_boxes = torch.cat([c, c], -1) + half + (offsets + jitter) * torch.cat([s, s], -1)
        # Scores flicker: mostly near the base, sometimes a sharp drop (blur, occlusion).
        flicker = torch.where(rand(*shape) < 0.1, 0.2, 1.0)
        obj_scores = (base_score[:, :, None] * flicker * (0.8 + 0.2 * rand(*shape))).clamp(0, 1)
        obj_labels = obj_classes[:, :, None].expand(shape)

        n = boxes_per_frame - num_obj_boxes
        xy = rand(n, 2) * torch.tensor([WIDTH, HEIGHT])
        wh = 20.0 + rand(n, 2) * 250.0
        clutter = torch.cat([xy - wh / 2, xy + wh / 2], 1)
        boxes.append(torch.cat([obj_boxes.reshape(-1, 4), clutter]))
        boxes[-1][:, 0::2] = boxes[-1][:, 0::2].clamp(0, WIDTH)
        boxes[-1][:, 1::2] = boxes[-1][:, 1::2].clamp(0, HEIGHT)
        scores.append(torch.cat([obj_scores.reshape(-1), 0.3 * rand(n) ** 2]))
        labels.append(
            torch.cat([obj_labels.reshape(-1), torch.randint(num_classes, (n,), generator=g)])
        )
    return boxes, scores, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--boxes", type=int, default=300, help="boxes per frame")
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    boxes, scores, labels = synthetic_video_detections(
        args.frames, args.boxes, args.classes, args.objects, args.seed
    )
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = seq_nms(boxes, scores, labels)
        times.append(time.perf_counter() - start)
    best = min(times)
    kept = sum(len(r.keep) for r in results)
    sequences = len(torch.unique(torch.cat([r.sequence_ids for r in results])))
    print(
        f"Seq-NMS on CPU, {args.frames} frames x {args.boxes} boxes, {args.classes} classes: "
        f"{best:.3f} s total (best of {args.repeats}; first run {times[0]:.3f} s), "
        f"{1000 * best / args.frames:.2f} ms per frame; "
        f"{kept} of {args.frames * args.boxes} boxes kept, in {sequences} sequences"
    )


if __name__ == "__main__":
    main()
