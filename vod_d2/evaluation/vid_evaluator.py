"""detectron2 ``DatasetEvaluator`` for video object detection (ImageNet VID protocol).

The trainer builds one per test dataset, e.g. with ``VIDEvaluator.from_config(cfg, dataset_name)``,
which reads ``cfg.TEST.VID_EVAL.*`` and writes into ``cfg.OUTPUT_DIR/inference/<dataset_name>``.
The metrics themselves live in `vid_evaluation`.
"""

import contextlib
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from .vid_evaluation import (
    MOTION_BIN_NAMES,
    FrameDetections,
    FrameGroundTruth,
    coco_ap,
    evaluate_vid,
)

try:
    # detectron2's C++ COCOeval: unofficial but very close to pycocotools, and much faster.
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
except ImportError:
    COCOeval_opt = None

__all__ = ["VIDEvaluator", "ground_truth_from_records"]

logger = logging.getLogger(__name__)

# One detection of the detections JSON (COCO results style + the frame's place in its video).
_JSON_ROW = (
    '{"image_id": %d, "video_id": %s, "frame_idx": %d, "category_id": %d, '
    '"bbox": [%.9g, %.9g, %.9g, %.9g], "score": %.9g}'
)
# Detections formatted per piece of the detections JSON.
_JSON_CHUNK = 200_000
# Below a result table with empty cells.
_EMPTY_NOTE = (
    "\n(empty: no ground truth in that class or motion bin, so no AP; left out of the means)"
)


def ground_truth_from_records(
    records: Sequence[dict], num_classes: int, dataset_name: str = "dataset"
) -> Tuple[FrameGroundTruth, List[str]]:
    """Flatten vod_d2 frame records (one dict per frame) into a `FrameGroundTruth`.

    Every record is an evaluated frame, in the given order, whether or not it has annotations.
    Boxes are used as the records give them (the devkit's pixel-inclusive XML coordinates).
    The conditions (see :mod:`.conditions`) are the records' ``conditions`` tags, sorted, then
    ``occluded`` where an annotation is flagged so; a dataset with neither has none.

    Args:
        records (list[dict]): frame records with image_id, height, width, video_id, frame_idx and
            annotations (bbox, bbox_mode, category_id, optional track_id).
        num_classes (int): number of classes; category ids must lie in 0..num_classes-1.
        dataset_name (str): named in error messages.

    Returns:
        tuple: the `FrameGroundTruth`, and the video_id of each video index of ``frame_video``.
    """
    video_index: Dict[str, int] = {}
    frames = {k: [] for k in ("image_ids", "heights", "widths", "frame_video", "frame_index")}
    box_frame, boxes, classes, track_ids, occluded = [], [], [], [], []
    seen_image_ids = set()
    for f, record in enumerate(records):
        missing = [
            k for k in ("image_id", "height", "width", "video_id", "frame_idx") if k not in record
        ]
        if missing:
            raise KeyError(
                f"Record {f} ({record.get('file_name', '?')}) of dataset '{dataset_name}' lacks "
                f"{missing}, which VID evaluation needs."
            )
        image_id = int(record["image_id"])
        if image_id in seen_image_ids:
            raise ValueError(f"Dataset '{dataset_name}' has image_id {image_id} twice.")
        seen_image_ids.add(image_id)
        frames["image_ids"].append(image_id)
        frames["heights"].append(record["height"])
        frames["widths"].append(record["width"])
        frames["frame_video"].append(
            video_index.setdefault(str(record["video_id"]), len(video_index))
        )
        frames["frame_index"].append(record["frame_idx"])
        frame_tracks = set()
        for ann in record.get("annotations", ()):
            category = ann["category_id"]
            if not 0 <= category < num_classes:
                raise ValueError(
                    f"An annotation of {record.get('file_name', image_id)} in dataset "
                    f"'{dataset_name}' has category_id {category}, outside 0..{num_classes - 1}."
                )
            box = ann["bbox"]
            if ann.get("bbox_mode", BoxMode.XYXY_ABS) != BoxMode.XYXY_ABS:
                box = BoxMode.convert(box, ann["bbox_mode"], BoxMode.XYXY_ABS)
            track = ann.get("track_id", -1)
            if track >= 0 and track in frame_tracks:
                raise ValueError(
                    f"{record.get('file_name', image_id)} (video {record['video_id']}) in dataset "
                    f"'{dataset_name}' has track_id {track} twice; motion IoUs need unique ids."
                )
            frame_tracks.add(track)
            box_frame.append(f)
            boxes.append(box)
            classes.append(category)
            track_ids.append(track)
            occluded.append(bool(ann.get("occluded", False)))
    tags = sorted({tag for record in records for tag in record.get("conditions", ())})
    frame_conditions = np.array(
        [[tag in record.get("conditions", ()) for tag in tags] for record in records], bool
    ).reshape(len(records), len(tags))
    box_conditions = frame_conditions[np.asarray(box_frame, dtype=np.int64)]
    if any(occluded):
        tags.append("occluded")
        frame_conditions = np.column_stack([frame_conditions, np.zeros(len(records), bool)])
        box_conditions = np.column_stack([box_conditions, occluded])
    gt = FrameGroundTruth(
        **frames, box_frame=box_frame, boxes=boxes, classes=classes, track_ids=track_ids,
        condition_names=tags, frame_conditions=frame_conditions, box_conditions=box_conditions,
    )  # fmt: skip
    return gt, list(video_index)


class VIDEvaluator(DatasetEvaluator):
    """ImageNet VID evaluation of a registered video dataset.

    ``evaluate()`` returns ``{"bbox": {...}}`` with, in percent (detectron2's convention):

    - ``mAP``: ImageNet VID devkit mAP@0.5 with the small-object IoU rule, over all frames of the
      dataset (the number VID papers report); ``AP-<class>`` per class.
    - ``mAP_slow``, ``mAP_medium``, ``mAP_fast``: FGFA's motion-speed breakdown of that mAP.
    - ``mAP_clean``, ``mAP_<condition>`` (e.g. ``mAP_motion_blur``, ``mAP_defocus``,
      ``mAP_occluded``), ``mAP_degraded``: the mAP of the GT seen in each condition, where the
      dataset has conditions (:mod:`.conditions`), and ``num_gt_<condition>`` the number of its
      GT boxes.
    - ``AP``, ``AP50``, ``AP75``: COCO metrics (pycocotools, IoU 0.5:0.95 / 0.5 / 0.75, no
      small-object rule), as CocoVID toolkits report them.

    Classes without GT get NaN and are left out of the means (see `vid_evaluation`). Frames the
    model produced no output for still count (their GT is missed), with a warning. If
    ``dump_detections``, the detections are written to ``<output_dir>/<dataset>_detections.json``
    before the metrics are computed: a JSON list of COCO-style results (``image_id``,
    ``category_id`` (the dataset's own id when the metadata has
    ``thing_dataset_id_to_contiguous_id``, else the contiguous one), ``bbox`` as XYWH, ``score``)
    plus ``video_id`` and ``frame_idx``, written to a temporary file and renamed, so an
    interrupted run never leaves a truncated file. ``output_dir`` must be a local directory.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        motion_frames: int = 10,
        dump_detections: bool = True,
        coco_metrics: bool = True,
        use_fast_impl: bool = True,
    ):
        """
        Args:
            dataset_name (str): a dataset registered in DatasetCatalog with vod_d2 frame records
                and ``thing_classes`` in its metadata.
            distributed (bool): gather the predictions of all ranks; rank 0 computes the metrics.
            output_dir (str or None): where the detections JSON goes; None writes nothing.
            motion_frames (int): frames on either side that define an object's motion IoU.
            dump_detections (bool): write the detections JSON (needs ``output_dir``).
            coco_metrics (bool): also compute COCO AP/AP50/AP75. pycocotools works detection
                by detection in Python: about 0.25 ms and 5 KB per detection with the C++
                COCOeval, so ImageNet VID val at 100 detections per frame (17.6M) takes about an
                hour and tens of GB; turn it off there (the devkit numbers need ~1 min, 5 GB).
            use_fast_impl (bool): use detectron2's C++ COCOeval when it is built.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._motion_frames = motion_frames
        self._dump_detections = dump_detections
        self._coco_metrics = coco_metrics
        self._cocoeval_cls = COCOeval_opt if use_fast_impl and COCOeval_opt else COCOeval
        self._predictions: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None):
        """Build from ``cfg.TEST.VID_EVAL``; ``output_dir`` defaults to
        ``OUTPUT_DIR/inference/<dataset_name>``."""
        return cls(
            dataset_name,
            distributed=True,
            output_dir=output_dir or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            motion_frames=cfg.TEST.VID_EVAL.MOTION_FRAMES,
            dump_detections=cfg.TEST.VID_EVAL.DUMP_DETECTIONS,
            coco_metrics=cfg.TEST.VID_EVAL.COCO_METRICS,
        )

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """Store each frame's detections as compact CPU arrays.

        Args:
            inputs (list[dict]): frame dicts with at least ``image_id``.
            outputs (list[dict]): ``{"instances": Instances}`` per frame with ``pred_boxes``
                (XYXY, original image coordinates), ``scores`` and ``pred_classes``.
        """
        for frame, output in zip(inputs, outputs):
            if "instances" not in output:
                raise KeyError(f"The output for image_id {frame['image_id']} has no 'instances'.")
            instances = output["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.numpy().astype(np.float32)
            scores = instances.scores.numpy().astype(np.float32)
            if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
                raise ValueError(
                    f"Non-finite boxes or scores for image_id {frame['image_id']} (video "
                    f"{frame.get('video_id')}, frame {frame.get('frame_idx')})."
                )
            classes = instances.pred_classes.numpy().astype(np.int32)
            self._predictions.append((int(frame["image_id"]), boxes, scores, classes))

    def evaluate(self):
        """Gather all ranks' detections; on the main process, dump and score them.

        Returns:
            OrderedDict: ``{"bbox": {metric: value in percent}}`` on the main process (see the
            class docstring), ``{}`` on the others or when nothing was processed.
        """
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("VIDEvaluator on '%s' received no predictions.", self._dataset_name)
            return {}
        metadata = MetadataCatalog.get(self._dataset_name)
        class_names = list(metadata.thing_classes)
        gt, video_names = ground_truth_from_records(
            DatasetCatalog.get(self._dataset_name), len(class_names), self._dataset_name
        )
        det = self._detections(predictions, gt, video_names)
        if self._dump_detections and self._output_dir:
            self._write_detections(gt, det, video_names, metadata)
        metrics = evaluate_vid(gt, det, len(class_names), motion_frames=self._motion_frames)
        coco = (
            coco_ap(gt, det, len(class_names), cocoeval_cls=self._cocoeval_cls)
            if self._coco_metrics
            else {}
        )
        results = OrderedDict({"mAP": 100.0 * metrics.mean_ap})
        for name in MOTION_BIN_NAMES:
            results[f"mAP_{name}"] = 100.0 * metrics.motion_mean_ap(name)
        for name in metrics.condition_class_ap:
            results[f"mAP_{name}"] = 100.0 * metrics.condition_mean_ap(name)
            results[f"num_gt_{name}"] = float(metrics.condition_class_num_gt[name].sum())
        results.update(coco)
        for c, name in enumerate(class_names):
            results[f"AP-{name}"] = 100.0 * float(metrics.class_ap[c])
        self._log(metrics, results, class_names)
        return OrderedDict({"bbox": results})

    def _detections(
        self, predictions, gt: FrameGroundTruth, video_names: List[str]
    ) -> FrameDetections:
        """Concatenate per-frame predictions, indexed by the frames of ``gt``."""
        frame_of = {image_id: f for f, image_id in enumerate(gt.image_ids.tolist())}
        frames = []
        for image_id, *_ in predictions:
            if image_id not in frame_of:
                raise ValueError(
                    f"Predictions for image_id {image_id}, which dataset '{self._dataset_name}' "
                    "does not have."
                )
            frames.append(frame_of[image_id])
        counts = np.bincount(frames, minlength=gt.num_frames)
        if (counts > 1).any():
            f = int(np.argmax(counts))
            raise ValueError(
                f"Frame {gt.frame_index[f]} of video {video_names[gt.frame_video[f]]} (image_id "
                f"{gt.image_ids[f]}) was predicted {counts[f]} times in '{self._dataset_name}'."
            )
        if (counts == 0).any():
            missed = np.flatnonzero(counts == 0)
            videos = sorted({video_names[v] for v in gt.frame_video[missed]})
            logger.warning(
                "%d of %d frames of '%s' got no predictions (videos %s%s); their objects count "
                "as missed.",
                len(missed),
                gt.num_frames,
                self._dataset_name,
                ", ".join(videos[:5]),
                ", ..." if len(videos) > 5 else "",
            )
        sizes = [len(p[2]) for p in predictions]
        return FrameDetections(
            frame=np.repeat(frames, sizes),
            boxes=np.concatenate([p[1].reshape(-1, 4) for p in predictions]),
            scores=np.concatenate([p[2] for p in predictions]),
            classes=np.concatenate([p[3] for p in predictions]),
        )

    def _write_detections(
        self, gt: FrameGroundTruth, det: FrameDetections, video_names: List[str], metadata
    ) -> None:
        contiguous_to_dataset = {
            v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()
        }
        category_ids = [contiguous_to_dataset.get(c, c) for c in range(len(metadata.thing_classes))]
        os.makedirs(self._output_dir, exist_ok=True)
        file_name = self._dataset_name.replace(os.sep, "_") + "_detections.json"
        path = os.path.join(self._output_dir, file_name)
        _write_text_atomically(path, _detections_json(gt, det, video_names, category_ids))
        logger.info("Wrote %d detections to %s", len(det.scores), path)

    def _log(self, metrics, results: Dict[str, float], class_names: List[str]) -> None:
        """Log the per-category table and the summary; an AP without GT is an empty cell."""
        rows = []
        subsets = {**metrics.motion_class_ap, **metrics.condition_class_ap}
        for c, name in enumerate(class_names):
            aps = [metrics.class_ap[c]] + [ap[c] for ap in subsets.values()]
            rows.append([name, int(metrics.class_num_gt[c])] + [_percent(ap, 1) for ap in aps])
        table = tabulate(
            rows,
            headers=["category", "#GT", "AP"] + [f"AP {b}" for b in subsets],
            tablefmt="pipe",
            numalign="left",
            disable_numparse=True,
        )
        logger.info(
            "Per-category ImageNet VID AP (devkit, IoU 0.5, small-object rule):\n%s%s",
            table,
            _EMPTY_NOTE if any("" in row for row in rows) else "",
        )
        summary = {
            k: _percent(v / 100.0, 3)
            for k, v in results.items()
            if not k.startswith(("AP-", "num_gt_"))
        }
        logger.info(
            "VID evaluation of '%s':\n%s%s",
            self._dataset_name,
            create_small_table(summary),
            _EMPTY_NOTE if "" in summary.values() else "",
        )


def _percent(value: float, digits: int) -> str:
    """``100 * value`` with ``digits`` decimals; an empty string for NaN (nothing to score)."""
    return "" if np.isnan(value) else f"{100.0 * value:.{digits}f}"


def _detections_json(
    gt: FrameGroundTruth, det: FrameDetections, video_names: List[str], category_ids: List[int]
) -> Iterator[str]:
    """The detections JSON in pieces, so the whole text never sits in memory at once."""
    quoted_videos = [json.dumps(name) for name in video_names]
    order = np.argsort(det.frame, kind="stable")
    yield "["
    separator = "\n"
    # Python lists format far faster than numpy scalars; chunks bound their memory.
    for start in range(0, len(order), _JSON_CHUNK):
        rows = order[start : start + _JSON_CHUNK]
        frame = det.frame[rows]
        x0, y0, x1, y1 = det.boxes[rows].T
        columns = (
            gt.image_ids[frame].tolist(),
            [quoted_videos[v] for v in gt.frame_video[frame].tolist()],
            gt.frame_index[frame].tolist(),
            [category_ids[c] for c in det.classes[rows].tolist()],
            x0.tolist(),
            y0.tolist(),
            (x1 - x0).tolist(),
            (y1 - y0).tolist(),
            det.scores[rows].tolist(),
        )
        lines = [_JSON_ROW % values for values in zip(*columns)]
        yield separator + ",\n".join(lines)
        separator = ",\n"
    yield "\n]\n"


def _write_text_atomically(path: str, pieces: Iterable[str]) -> None:
    """Write to a temporary file in the same directory, then rename it over ``path``.

    ``os.replace`` is atomic on one filesystem, so readers see the old file or the complete new
    one, never a partial write; the temporary file is removed if anything fails.
    """
    handle, temp_path = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(path)),
        prefix=f".{os.path.basename(path)}.",
        suffix=".tmp",
    )
    try:
        with os.fdopen(handle, "w") as f:
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); results are meant to be shared like others.
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise
