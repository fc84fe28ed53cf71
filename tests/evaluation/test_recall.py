import json

import numpy as np

from vod_d2.data.synthetic import SYNTHETIC_CLASSES, render_video, write_synthetic_video
from vod_d2.evaluation.recall import detection_recall, main


def _gt(frame, category, box):
    return {"frame_idx": frame, "category_id": category, "bbox": box}


def _det(frame, category, box, score):
    return {**_gt(frame, category, box), "score": score}


def test_objects_count_once_with_their_class_and_an_iou_of_one_half():
    ground_truth = [
        _gt(0, 0, [0, 0, 10, 10]),
        _gt(0, 1, [20, 0, 10, 10]),
        _gt(1, 0, [0, 0, 10, 10]),
    ]
    detections = [
        # Frame 0: IoU 0.6 with the class-0 object (10 x 6 box inside it: 60 / 100); a better
        # box of the wrong class on the class-1 object; a duplicate of the first, lower score.
        _det(0, 0, [0, 0, 10, 6], 0.9),
        _det(0, 0, [0, 0, 10, 10], 0.5),
        _det(0, 0, [20, 0, 10, 10], 0.8),
        # Frame 1: IoU 0.4 (40 / 100): not found.
        _det(1, 0, [0, 0, 10, 4], 0.9),
    ]
    assert detection_recall(ground_truth, detections) == (1, 3)
    assert detection_recall(ground_truth, detections, iou=0.4) == (2, 3)
    assert detection_recall(ground_truth, []) == (0, 3)


def test_the_demo_videos_ground_truth_is_the_rendered_objects(tmp_path, capsys):
    video = str(tmp_path / "v.mp4")
    gt_file = str(tmp_path / "gt.json")
    write_synthetic_video(video, num_frames=6, size=(96, 128), seed=3, ground_truth=gt_file)
    rendered = render_video(np.random.default_rng([3, 3, 0]), 6, (96, 128))
    with open(gt_file) as f:
        ground_truth = json.load(f)
    expected = [
        (t, o["category"], o["box"]) for t, objs in enumerate(rendered.objects) for o in objs
    ]
    assert ground_truth and len(ground_truth) == len(expected)
    for obj, (t, category, (x0, y0, x1, y1)) in zip(ground_truth, expected):
        assert obj["frame_idx"] == t and obj["category_id"] == category
        assert obj["category"] == SYNTHETIC_CLASSES[category]
        assert obj["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    # Detections equal to the ground truth find every object.
    with open(tmp_path / "d.json", "w") as f:
        json.dump([dict(o, score=1.0) for o in ground_truth], f)
    main(["--ground-truth", gt_file, "--detections", str(tmp_path / "d.json")])
    total = len(ground_truth)
    assert f"{total} of {total} ground-truth objects (100.0%)" in capsys.readouterr().out
