"""VIDEvaluator end to end through DatasetCatalog, on a tiny dataset registered by the test."""

import copy
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from vod_d2.evaluation import VIDEvaluator, ground_truth_from_records
from vod_d2.evaluation import vid_evaluator as vid_evaluator_module

CLASSES = ["cat", "dog", "bird"]  # bird has no GT
SIZE = 64


def annotation(box, category, track):
    return {
        "bbox": box,
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": category,
        "track_id": track,
        "occluded": False,
        "generated": False,
    }


def frame(image_id, video, index, length, annotations):
    return {
        "file_name": f"{video}/{index:06d}.JPEG",
        "height": SIZE,
        "width": SIZE,
        "image_id": image_id,
        "video_id": video,
        "frame_idx": index,
        "video_length": length,
        "annotations": annotations,
    }


CAT_A = [4, 4, 23, 23]
CAT_B = [10, 10, 29, 29]


def dog_box(t):
    # 10 x 10, 12 px further each frame: never overlaps its previous box (motion IoU 0, "fast")
    return [30 + 12 * t, 40, 39 + 12 * t, 49]


RECORDS = [
    # video A: a static cat (motion IoU 1, "slow") and a fast dog
    frame(10, "A", 0, 3, [annotation(CAT_A, 0, 0), annotation(dog_box(0), 1, 1)]),
    frame(11, "A", 1, 3, [annotation(CAT_A, 0, 0), annotation(dog_box(1), 1, 1)]),
    frame(12, "A", 2, 3, [annotation(CAT_A, 0, 0), annotation(dog_box(2), 1, 1)]),
    # video B: a cat seen once (no neighbour: motion IoU 0, "fast"), then an empty frame
    frame(20, "B", 0, 2, [annotation(CAT_B, 0, 0)]),
    frame(21, "B", 1, 2, []),
]


@pytest.fixture
def dataset_name():
    name = "vod_d2_test_vid_evaluator_tiny"
    DatasetCatalog.register(name, lambda: copy.deepcopy(RECORDS))
    MetadataCatalog.get(name).set(
        thing_classes=CLASSES,
        thing_dataset_id_to_contiguous_id={11: 0, 12: 1, 13: 2},
        evaluator_type="vid",
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def model_output(boxes, scores, classes):
    instances = Instances((SIZE, SIZE))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": instances}


def perfect_outputs(records):
    """One exact detection per GT box; a low-score bird FP in the empty frame."""
    inputs, outputs = [], []
    for record in records:
        boxes = [a["bbox"] for a in record["annotations"]]
        classes = [a["category_id"] for a in record["annotations"]]
        if not boxes:
            boxes, classes = [[0, 0, 9, 9]], [2]
        inputs.append(
            {k: record[k] for k in ("image_id", "video_id", "frame_idx", "height", "width")}
        )
        outputs.append(model_output(boxes, [0.9 - 0.1 * i for i in range(len(boxes))], classes))
    return inputs, outputs


def run(evaluator, records):
    evaluator.reset()
    inputs, outputs = perfect_outputs(records)
    # two frames per call, as a batched loader would
    for i in range(0, len(inputs), 2):
        evaluator.process(inputs[i : i + 2], outputs[i : i + 2])
    return evaluator.evaluate()


def test_perfect_detections_and_the_detections_json(dataset_name, tmp_path):
    evaluator = VIDEvaluator(dataset_name, output_dir=str(tmp_path))
    results = run(evaluator, RECORDS)["bbox"]
    assert results["mAP"] == pytest.approx(100.0)
    assert results["AP-cat"] == pytest.approx(100.0)
    assert results["AP-dog"] == pytest.approx(100.0)
    assert math.isnan(results["AP-bird"])  # no GT: NaN, left out of the mean
    # slow: the video-A cat only; fast: the video-B cat and the dog; nothing medium
    assert results["mAP_slow"] == pytest.approx(100.0)
    assert results["mAP_fast"] == pytest.approx(100.0)
    assert math.isnan(results["mAP_medium"])
    for key in ("AP", "AP50", "AP75"):
        assert results[key] == pytest.approx(100.0)

    # The JSON is complete and valid, and the temporary file is gone.
    path = tmp_path / f"{dataset_name}_detections.json"
    assert sorted(os.listdir(tmp_path)) == [path.name]
    rows = json.loads(path.read_text())
    assert len(rows) == 8  # 7 GT boxes + 1 bird
    by_image = {}
    for row in rows:
        by_image.setdefault(row["image_id"], []).append(row)
    for record in RECORDS:
        got = by_image[record["image_id"]]
        for row in got:
            assert row["video_id"] == record["video_id"]
            assert row["frame_idx"] == record["frame_idx"]
        expected = record["annotations"] or [{"bbox": [0, 0, 9, 9], "category_id": 2}]
        for row, ann in zip(got, expected):
            x0, y0, x1, y1 = ann["bbox"]
            assert row["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
            # the dataset's own category ids, through thing_dataset_id_to_contiguous_id
            assert row["category_id"] == 11 + ann["category_id"]


def test_process_keeps_compact_cpu_arrays(dataset_name):
    evaluator = VIDEvaluator(dataset_name, distributed=False)
    inputs, outputs = perfect_outputs(RECORDS[:1])
    evaluator.process(inputs, outputs)
    ((image_id, boxes, scores, classes),) = evaluator._predictions
    assert image_id == 10
    assert isinstance(boxes, np.ndarray) and boxes.dtype == np.float32 and boxes.shape == (2, 4)
    assert scores.dtype == np.float32 and classes.dtype == np.int32
    evaluator.reset()
    assert evaluator._predictions == []


def test_frames_without_output_still_count(dataset_name, caplog):
    evaluator = VIDEvaluator(dataset_name, output_dir=None)
    with caplog.at_level(logging.WARNING):
        results = run(evaluator, RECORDS[:3])["bbox"]  # video B never reaches the evaluator
    assert "2 of 5 frames" in caplog.text and "B" in caplog.text
    # cat: 3 of 4 GT found at precision 1 -> AP 75 ; dog: 100 -> mAP 87.5
    assert results["AP-cat"] == pytest.approx(75.0)
    assert results["mAP"] == pytest.approx(87.5)
    # fast: the missed video-B cat is the only fast cat -> 0 ; dog 100 -> 50
    assert results["mAP_fast"] == pytest.approx(50.0)
    assert results["mAP_slow"] == pytest.approx(100.0)


def test_a_crash_while_writing_leaves_no_partial_file(dataset_name, tmp_path, monkeypatch):
    path = tmp_path / f"{dataset_name}_detections.json"
    path.write_text('["previous run"]')

    def broken_json(*args):
        yield "[{"
        raise RuntimeError("disk full")

    monkeypatch.setattr(vid_evaluator_module, "_detections_json", broken_json)
    with pytest.raises(RuntimeError, match="disk full"):
        run(VIDEvaluator(dataset_name, output_dir=str(tmp_path)), RECORDS)
    assert path.read_text() == '["previous run"]'
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_predictions_for_unknown_or_repeated_frames_raise(dataset_name):
    evaluator = VIDEvaluator(dataset_name, distributed=False)
    evaluator.process([{"image_id": 999}], [model_output([[0, 0, 5, 5]], [0.5], [0])])
    with pytest.raises(ValueError, match="image_id 999"):
        evaluator.evaluate()
    evaluator.reset()
    inputs, outputs = perfect_outputs(RECORDS[:1])
    evaluator.process(inputs + inputs, outputs + outputs)
    with pytest.raises(ValueError, match="Frame 0 of video A .* predicted 2 times"):
        evaluator.evaluate()


def test_non_finite_outputs_raise(dataset_name):
    evaluator = VIDEvaluator(dataset_name)
    with pytest.raises(ValueError, match="image_id 10"):
        evaluator.process([{"image_id": 10}], [model_output([[0, 0, float("nan"), 5]], [0.5], [0])])


def test_no_predictions_returns_empty(dataset_name):
    assert VIDEvaluator(dataset_name).evaluate() == {}


def test_ground_truth_from_records_errors_name_the_culprit():
    bad_class = [frame(1, "V", 0, 1, [annotation([0, 0, 5, 5], 7, 0)])]
    with pytest.raises(ValueError, match="V/000000.JPEG.*'mine'.*category_id 7"):
        ground_truth_from_records(bad_class, 3, "mine")
    missing = [{k: v for k, v in RECORDS[0].items() if k != "video_id"}]
    with pytest.raises(KeyError, match="A/000000.JPEG.*video_id"):
        ground_truth_from_records(missing, 3, "mine")
    with pytest.raises(ValueError, match="image_id 10 twice"):
        ground_truth_from_records(RECORDS[:1] * 2, 3, "mine")
    twice = [
        frame(1, "V", 0, 1, [annotation([0, 0, 5, 5], 0, 4), annotation([9, 9, 15, 15], 1, 4)])
    ]
    with pytest.raises(ValueError, match="V/000000.JPEG .video V.* track_id 4 twice"):
        ground_truth_from_records(twice, 3, "mine")


def test_ground_truth_from_records_layout():
    gt, videos = ground_truth_from_records(RECORDS, 3)
    assert videos == ["A", "B"]
    np.testing.assert_array_equal(gt.image_ids, [10, 11, 12, 20, 21])
    np.testing.assert_array_equal(gt.frame_video, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(gt.box_frame, [0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(gt.classes, [0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(gt.boxes[0], CAT_A)
    # an XYWH annotation is converted
    xywh = frame(1, "V", 0, 1, [dict(annotation([2, 3, 4, 5], 0, 0), bbox_mode=BoxMode.XYWH_ABS)])
    gt, _ = ground_truth_from_records([xywh], 3)
    np.testing.assert_array_equal(gt.boxes[0], [2, 3, 6, 8])


def test_from_config(tmp_path):
    from detectron2.config import get_cfg

    from vod_d2.config import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.VID_EVAL.MOTION_FRAMES = 4
    cfg.TEST.VID_EVAL.DUMP_DETECTIONS = False
    evaluator = VIDEvaluator.from_config(cfg, "some_dataset")
    assert evaluator._motion_frames == 4
    assert evaluator._dump_detections is False
    assert evaluator._output_dir == os.path.join(str(tmp_path), "inference", "some_dataset")


def _distributed_worker(rank, world_size, init_file, output_dir, result_file):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    name = "vod_d2_test_vid_evaluator_distributed"
    DatasetCatalog.register(name, lambda: copy.deepcopy(RECORDS))
    MetadataCatalog.get(name).set(thing_classes=CLASSES)
    evaluator = VIDEvaluator(name, output_dir=output_dir)
    # Whole videos per rank, as the test loader shards them: video A on rank 0, B on rank 1.
    inputs, outputs = perfect_outputs([r for r in RECORDS if (r["video_id"] == "B") == rank])
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    if rank == 0:
        with open(result_file, "w") as f:
            json.dump(results["bbox"], f)
    else:
        assert results == {}
    torch.distributed.destroy_process_group()


def test_distributed_evaluation_gathers_all_ranks(dataset_name, tmp_path):
    # fork: the workers reuse this process's imports instead of importing detectron2 again.
    torch.multiprocessing.start_processes(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path / "out"), str(tmp_path / "results.json")),
        nprocs=2,
        start_method="fork",
    )
    distributed = json.loads((tmp_path / "results.json").read_text())
    single = run(VIDEvaluator(dataset_name, distributed=False), RECORDS)["bbox"]
    assert distributed.keys() == single.keys()
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, nan_ok=True), key
    rows = json.loads(
        (tmp_path / "out" / "vod_d2_test_vid_evaluator_distributed_detections.json").read_text()
    )
    assert sorted({row["image_id"] for row in rows}) == [10, 11, 12, 20, 21]


def test_tables_show_an_ap_without_ground_truth_as_an_empty_cell(dataset_name, caplog):
    with caplog.at_level(logging.INFO, logger="vod_d2"):
        run(VIDEvaluator(dataset_name, distributed=False, coco_metrics=False), RECORDS)
    per_class, summary = [r.getMessage() for r in caplog.records if "|" in r.getMessage()]
    assert "nan" not in per_class.lower() and "nan" not in summary.lower()
    lines = [line.split("|") for line in per_class.splitlines() if line.startswith("|")]
    rows = {cells[1].strip(): cells[2:-1] for cells in lines}
    # bird: no GT anywhere; nothing medium: its AP is empty in every class; cat has slow GT.
    assert [cell.strip() for cell in rows["bird"]] == ["0", "", "", "", ""]
    assert [cell.strip() for cell in rows["cat"]] == ["4", "100.0", "100.0", "", "100.0"]
    for table in (per_class, summary):
        assert "(empty: no ground truth in that class or motion bin" in table
    header, _, values = summary.splitlines()[1:4]
    cells = dict(zip(header.split("|")[1:-1], values.split("|")[1:-1]))
    assert {k.strip(): v.strip() for k, v in cells.items()}["mAP_medium"] == ""


def test_conditions_of_the_records_are_reported_beside_the_motion_bins(dataset_name):
    # Frame 11 of video A is blurred and the dog there is occluded; detections miss the dog
    # in frame 11 only, so the blurred and occluded GT lose AP and the clean GT keeps 100.
    records = copy.deepcopy(RECORDS)
    records[1]["conditions"] = ("motion_blur",)
    records[1]["annotations"][1]["occluded"] = True
    name = "vod_d2_test_vid_evaluator_conditions"
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(thing_classes=CLASSES, evaluator_type="vid")
    try:
        evaluator = VIDEvaluator(name, output_dir=None, coco_metrics=False)
        inputs, outputs = perfect_outputs(records)
        missed = outputs[1]["instances"]
        outputs[1] = {"instances": missed[missed.pred_classes == 0]}
        evaluator.process(inputs, outputs)
        results = evaluator.evaluate()["bbox"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert results["mAP_clean"] == pytest.approx(100.0)
    # motion_blur: the cat (found) and the dog (missed) of frame 11, one class each
    assert results["mAP_motion_blur"] == pytest.approx(50.0)
    assert results["mAP_occluded"] == 0.0 and results["num_gt_occluded"] == 1
    assert results["mAP_degraded"] == pytest.approx(50.0) and results["num_gt_degraded"] == 2
    assert results["mAP"] < 100.0
    # A dataset without conditions reports none.
    assert "mAP_clean" not in run(VIDEvaluator(dataset_name, coco_metrics=False), RECORDS)["bbox"]
