#!/usr/bin/env python
"""
Annotate a video with a vod_d2 detector: detectron2's demo for videos.

    python demo/demo.py --config-file configs/synthetic/single_frame.yaml \
        --video-input in.mp4 --output out.mp4 --json detections.json \
        --opts MODEL.WEIGHTS output/synthetic/single_frame/model_final.pth
    python demo/demo.py --config-file ... --input 'frames/*.jpg' --output annotated/  # or out.mp4
    python demo/demo.py --exported exported/stsn_rfcn --video-input in.mp4 --output out.mp4

With ``--exported DIR`` the frames go through the step that ``tools/export_model.py`` exported
to DIR (its AOTInductor package, or its ONNX model with ``--backend onnx``), run by DIR's
``run.py`` without vod_d2's modelling code; ``--config-file`` is then optional (its first test
dataset gives the class names and ``--json`` category ids, else DIR's ``export.json``).

Frames go through :class:`vod_d2.engine.VideoPredictor` one at a time, so memory is bounded by
the model's window whatever the video's length; only the frames still waiting for their
result (the look-ahead of an offline model) are held for drawing. With ``--seq-nms`` the
results of the whole video come at its end: the frames are then decoded a second time to be
drawn, rather than kept.

Every output (video, frame folder, JSON) is written under a temporary name in its target folder
and moved into place only when the whole video is done, so a failed or interrupted run (Ctrl-C,
SIGTERM) leaves nothing behind. Output folders that do not exist yet are created.

Class names and ``--json`` category ids are those of the config's first test dataset
(``DATASETS.TEST``; a dataset of your own is declared in the ``DATASETS.FILE`` datasets file),
the same as the evaluator's detections dump; without its metadata the demo warns and uses the
model's class indices.
"""

import argparse
import glob
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tqdm
from detectron2.structures import BoxMode, Instances
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode

import vod_d2  # noqa: F401  (registers the meta-architectures, modules and datasets)
from vod_d2 import make_online
from vod_d2.checkpoint import resolve_weights
from vod_d2.data import register_datasets_from_config
from vod_d2.data.mapper import read_frame
from vod_d2.engine import VideoPredictor, VideoReader, load_config
from vod_d2.engine.predictor import dataset_metadata

logger = logging.getLogger("vod_d2.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v")
# Tried in order until OpenCV opens a writer: mp4v and MJPG ship with every OpenCV wheel,
# avc1 (H.264) and XVID depend on the build.
CODECS = ("mp4v", "avc1", "MJPG", "XVID")
# Frames per second of a video made from --input frames, unless --fps says otherwise.
DEFAULT_FPS = 10.0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="vod_d2 demo: detect objects in a video")
    parser.add_argument(
        "--config-file", metavar="FILE", help="config file (optional with --exported)"
    )
    parser.add_argument(
        "--exported",
        metavar="DIR",
        help="run the streaming step tools/export_model.py wrote to DIR instead of the model",
    )
    parser.add_argument(
        "--backend",
        choices=("aoti", "onnx"),
        default="aoti",
        help="with --exported: the AOTInductor package or the ONNX model (onnxruntime)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="the frames of one video, in order: a folder of images, image files, or a glob "
        "pattern such as 'frames/*.jpg' (sorted by name, numbers in natural order)",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help=f"annotated video file ({', '.join(VIDEO_EXTENSIONS)}), or a folder (a path without "
        "extension, created if needed) to put it in (for --video-input) or to write annotated "
        "images to (for --input frames)",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the detections as COCO-style results (image_id = frame index, frame_idx, "
        "video_id, category_id, bbox XYWH, score; sequence_id with --seq-nms)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the detections drawn and exported",
    )
    parser.add_argument(
        "--seq-nms",
        action="store_true",
        help="rescore detections with Seq-NMS (TEST.SEQ_NMS.ENABLED); results then come at the "
        "end of the video",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="the method's causal variant (vod_d2.make_online): every frame detected from past "
        "frames only, as it arrives (no look-ahead, no Seq-NMS)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        help=f"frames per second of the output video (default: the input's, {DEFAULT_FPS:g} for "
        "--input frames)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="modify config options with 'KEY VALUE' pairs, e.g. MODEL.WEIGHTS model.pth; it "
        "takes everything after it, so it comes last",
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """The arguments, with the mistakes argparse cannot see reported as usage errors."""
    args = parser.parse_args(argv)
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        parser.error(
            f"--opts must come last: it takes everything after it as config KEY VALUE pairs, "
            f"so {', '.join(flags)} became config options; move --opts and its pairs to the end"
        )
    if not args.output and not args.json:
        parser.error("nothing to write: give --output and/or --json")
    if not args.config_file and not args.exported:
        parser.error("the following arguments are required: --config-file (or --exported DIR)")
    if args.exported:
        taken = [f for f, on in (("--seq-nms", args.seq_nms), ("--online", args.online)) if on]
        if args.opts:
            taken.append("--opts")
        if taken:
            parser.error(
                f"{', '.join(taken)}: not with --exported (the exported step is the method's "
                "causal variant, its config fixed at export)"
            )
    return args


def setup_cfg(args):
    """
    Config from the defaults, the vod_d2 keys, the file, ``--opts`` and the demo's flags; the
    datasets of ``DATASETS.FILE`` are registered.
    """
    cfg = load_config(args.config_file, args.opts)
    register_datasets_from_config(cfg)
    if args.seq_nms and args.online:
        raise ValueError("--seq-nms needs whole videos and --online none: choose one")
    if args.seq_nms:
        cfg.TEST.SEQ_NMS.ENABLED = True
    if args.online:
        for key, (old, new) in make_online(cfg).items():
            logger.info(f"--online: {key} {old} -> {new}")
    if cfg.TEST.SEQ_NMS.ENABLED:
        # Seq-NMS raises weak boxes linked to strong ones: it must see them, so the model keeps
        # its own low threshold and the confidence threshold applies after the rescoring.
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, args.confidence_threshold
        )
    else:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


class ImageFrames:
    """The frames of a video stored as image files, read (BGR) one at a time, re-iterable."""

    def __init__(self, inputs: Sequence[str]):
        """
        Args:
            inputs: a folder of images, image files, or glob patterns.
        """
        self.name = " ".join(inputs)
        if len(inputs) == 1 and os.path.isdir(inputs[0]):
            paths = [
                os.path.join(inputs[0], f)
                for f in os.listdir(inputs[0])
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
            if not paths:
                raise FileNotFoundError(f"--input folder {inputs[0]!r} holds no image")
        else:
            paths = []
            for pattern in inputs:
                matches = glob.glob(os.path.expanduser(pattern))
                if not matches:
                    raise FileNotFoundError(f"--input {pattern!r}: no such file")
                paths.extend(matches)
        self.paths = sorted(set(paths), key=_natural_key)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            # PIL, as in training and evaluation (detectron2's demo does the same).
            yield read_frame(path, "BGR")


def _natural_key(path: str) -> List:
    """Sort key putting frame_2 before frame_10."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path)]


class _AtomicFile:
    """A file written under a temporary name next to ``path``, moved into place on commit."""

    def __init__(self, path: str, what: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise IsADirectoryError(f"cannot write {what} {path!r}: it is a folder")
        # Same extension as the target: OpenCV picks the container from it.
        self.tmp_path = os.path.join(
            folder, f".{os.path.basename(path)}.tmp{os.getpid()}{os.path.splitext(path)[1]}"
        )
        try:
            os.makedirs(folder, exist_ok=True)
            open(self.tmp_path, "wb").close()
        except OSError as e:
            raise OSError(f"cannot write {what} {path!r}: {e}") from e

    def finish(self):
        """Complete the temporary file."""

    def commit(self):
        """Move the finished file into place."""
        os.replace(self.tmp_path, self.path)

    def abort(self):
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)


class VideoSink(_AtomicFile):
    """Annotated frames -> a video file, with the first codec OpenCV can open."""

    def __init__(self, path: str, fps: float):
        super().__init__(path, "the output video")
        self.fps = fps
        self._writer = None

    def write(self, frame: np.ndarray, index: int):
        if self._writer is None:
            self._writer = self._open(frame.shape[1], frame.shape[0])
        self._writer.write(frame)

    def _open(self, width: int, height: int):
        for codec in CODECS:
            writer = cv2.VideoWriter(
                self.tmp_path, cv2.VideoWriter_fourcc(*codec), self.fps, (width, height)
            )
            if writer.isOpened():
                logger.info(f"Writing {self.path} with codec {codec}")
                return writer
            writer.release()
        raise RuntimeError(
            f"OpenCV cannot write {self.path!r}: none of the codecs {', '.join(CODECS)} works "
            f"for {os.path.splitext(self.path)[1] or 'extension-less'} files in this build; try "
            "a .mp4 or .avi output"
        )

    def finish(self):
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if os.path.getsize(self.tmp_path) == 0:
            raise RuntimeError(f"OpenCV wrote nothing to {self.path!r}")

    def abort(self):
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        super().abort()


class FolderSink:
    """Annotated frames -> one image per frame in a folder, moved in when the video is done."""

    def __init__(self, folder: str, names: Sequence[str]):
        if len(set(names)) != len(names):
            raise ValueError(
                f"cannot write the frames to the folder {folder!r}: some input frames have the "
                "same file name; write a video instead"
            )
        self.folder = folder
        self.names = names
        parent = os.path.dirname(os.path.abspath(folder))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"cannot write the output folder {folder!r}: it is a file")
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp_folder = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.")
        except OSError as e:
            raise OSError(f"cannot write the output folder {folder!r}: {e}") from e

    def write(self, frame: np.ndarray, index: int):
        path = os.path.join(self.tmp_folder, self.names[index])
        if not cv2.imwrite(path, frame):
            raise OSError(f"OpenCV cannot write the image {path!r}")

    def finish(self):
        """The images are complete as soon as written."""

    def commit(self):
        os.makedirs(self.folder, exist_ok=True)
        for name in self.names:
            os.replace(os.path.join(self.tmp_folder, name), os.path.join(self.folder, name))
        os.rmdir(self.tmp_folder)

    def abort(self):
        shutil.rmtree(self.tmp_folder, ignore_errors=True)


class JsonSink(_AtomicFile):
    """Detections -> COCO-style results (one dict per box), written when the video is done."""

    def __init__(self, path: str, video_id: str, metadata):
        super().__init__(path, "the JSON file")
        self.video_id = video_id
        contiguous_to_dataset = {
            v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()
        }
        self._category_id = lambda c: contiguous_to_dataset.get(c, c)
        self.results: List[dict] = []

    def add(self, index: int, instances: Instances):
        boxes = BoxMode.convert(
            instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
        )
        sequences = instances.seq_ids.tolist() if instances.has("seq_ids") else None
        for k, (box, score, label) in enumerate(
            zip(boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist())
        ):
            result = {
                "image_id": index,
                "video_id": self.video_id,
                "frame_idx": index,
                "category_id": self._category_id(label),
                "bbox": [round(v, 2) for v in box],
                "score": round(score, 5),
            }
            if sequences is not None:
                result["sequence_id"] = sequences[k]
            self.results.append(result)

    def finish(self):
        with open(self.tmp_path, "w") as f:
            json.dump(self.results, f)


class FrameDrawer:
    """Draws a video's detections with one ``VideoVisualizer``, so colours follow objects."""

    def __init__(self, metadata, confidence_threshold: float):
        self.visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
        self.confidence_threshold = confidence_threshold
        # The visualizer's colour pool: more IDs than this in one frame would exhaust it.
        self._max_ids = metadata.get("max_num_instances", 74)

    def select(self, instances: Instances) -> Instances:
        """The detections to show: on the CPU, above the confidence threshold."""
        instances = instances.to("cpu")
        return instances[instances.scores >= self.confidence_threshold]

    def draw(self, frame: np.ndarray, instances: Instances) -> np.ndarray:
        """
        Args:
            frame: (H, W, 3) uint8 BGR frame.
            instances: its selected detections.

        Returns:
            ndarray: (H, W, 3) uint8 BGR annotated frame.
        """
        if instances.has("seq_ids") and len(instances) <= self._max_ids:
            # A Seq-NMS sequence is one object over time: the visualizer colours it by ID.
            instances.ID = instances.seq_ids.tolist()
        vis = self.visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
        return np.ascontiguousarray(vis.get_image()[:, :, ::-1])


def annotate(
    predictor: VideoPredictor,
    name: str,
    frames: Iterable[np.ndarray],
    num_frames: Optional[int],
    drawer: FrameDrawer,
    sink=None,
    json_sink: Optional[JsonSink] = None,
) -> int:
    """
    Detect, draw and export every frame of one video.

    Args:
        predictor: the predictor, reset here.
        name: the video's name, for error messages.
        frames: the video's BGR frames; iterated twice when the predictor's results come at the
            end of the video (Seq-NMS).
        num_frames: expected number of frames, for the progress bar (None if unknown).
        drawer: draws the frames.
        sink: receives ``write(annotated_frame, index)`` for every frame; None to draw nothing.
        json_sink: receives ``add(index, instances)`` for every frame.

    Returns:
        int: the number of frames.
    """

    def emit(index: int, frame: Optional[np.ndarray], instances: Instances):
        instances = drawer.select(instances)
        if json_sink is not None:
            json_sink.add(index, instances)
        if sink is not None:
            sink.write(drawer.draw(frame, instances), index)

    results_at_end = predictor.video_postprocess is not None
    predictor.reset(name)
    # Frames waiting for their result; results come in frame order, so the oldest is next.
    pending: deque = deque()
    count = 0
    with tqdm.tqdm(total=num_frames or None, unit="frame", desc="detect") as bar:
        for frame in frames:
            if sink is not None and not results_at_end:
                pending.append(frame)
            for index, instances in predictor.put(frame):
                emit(index, pending.popleft() if pending else None, instances)
            count += 1
            bar.update()
        if count == 0:
            raise ValueError(f"video {name!r} has no frames")
        done = predictor.flush()
        if not results_at_end:
            for index, instances in done:
                emit(index, pending.popleft() if pending else None, instances)
    if results_at_end:
        # The frames were not kept: decode them again to draw the rescored results.
        again = iter(frames) if sink is not None else None
        for index, instances in tqdm.tqdm(done, unit="frame", desc="draw"):
            frame = next(again, None) if again is not None else None
            if again is not None and frame is None:
                raise RuntimeError(f"video {name!r} has fewer frames on a second reading")
            emit(index, frame, instances)
    return count


def _open_source(args) -> Tuple[Iterable[np.ndarray], Optional[int], float, str]:
    """(frames, number of frames if known, fps, video name) of the input."""
    if args.video_input:
        reader = VideoReader(args.video_input)
        fps = args.fps or reader.fps or DEFAULT_FPS
        return reader, reader.num_frames or None, fps, args.video_input
    frames = ImageFrames(args.input)
    return frames, len(frames), args.fps or DEFAULT_FPS, frames.name


def _make_sink(args, frames, fps: float):
    """
    Where the annotated frames go: a video file, or a folder (an existing one, a path ending
    with a separator or without extension): for --video-input the video goes in it, for
    --input frames the annotated images.
    """
    output = args.output
    extension = os.path.splitext(output.rstrip(os.sep))[1].lower()
    is_folder = os.path.isdir(output) or output.endswith(os.sep) or not extension
    if not is_folder and extension not in VIDEO_EXTENSIONS:
        raise ValueError(
            f"--output {output!r}: {extension} is not a video extension "
            f"({', '.join(VIDEO_EXTENSIONS)}); give a video file or a folder"
        )
    if args.video_input and is_folder:
        stem = os.path.splitext(os.path.basename(args.video_input))[0]
        return VideoSink(os.path.join(output, stem + ".mp4"), fps)
    if is_folder:
        return FolderSink(output, [os.path.basename(p) for p in frames.paths])
    return VideoSink(output, fps)


class ExportedPredictor:
    """
    The predictor's streaming interface (``reset``, ``put``, ``flush``) over an exported step
    (``run.py``'s ``ExportedStream`` of an export folder): every frame's result comes at once.
    """

    video_postprocess = None

    def __init__(self, directory: str, backend: str = "aoti", metadata=None):
        """
        Args:
            directory: the folder tools/export_model.py wrote.
            backend: "aoti" or "onnx".
            metadata: class names and category ids to draw and export with (default: the
                export's class names).
        """
        import importlib.util

        from detectron2.data import MetadataCatalog

        runner = os.path.join(directory, "run.py")
        if not os.path.isfile(runner):
            raise FileNotFoundError(f"--exported {directory}: no run.py (not an export folder)")
        spec = importlib.util.spec_from_file_location("vod_d2_exported_runner", runner)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.stream = module.ExportedStream(directory, backend)
        self.input_error = module.InputError
        if metadata is None:
            metadata = MetadataCatalog.get(f"__exported__{os.path.abspath(directory)}")
            classes = self.stream.step.description.get("classes")
            if classes and not metadata.get("thing_classes", None):
                metadata.set(thing_classes=list(classes))
        self.metadata = metadata
        self._index = 0

    def reset(self, video_name: str = "video"):
        self.stream.reset()
        self._index = 0

    def put(self, frame: np.ndarray) -> List[Tuple[int, Instances]]:
        import torch
        from detectron2.structures import Boxes

        try:
            boxes, scores, classes = self.stream.put(frame)
        except self.input_error as e:
            raise ValueError(f"frame {self._index}: {e}") from None
        instances = Instances(frame.shape[:2])
        instances.pred_boxes = Boxes(torch.as_tensor(boxes).reshape(-1, 4))
        instances.scores = torch.as_tensor(scores)
        instances.pred_classes = torch.as_tensor(classes)
        self._index += 1
        return [(self._index - 1, instances)]

    def flush(self) -> List[Tuple[int, Instances]]:
        self.reset()
        return []


def _check_weights(cfg) -> None:
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: the demo runs a randomly initialised model")
    else:
        resolve_weights(cfg.MODEL.WEIGHTS)


def _raise_system_exit(signum, frame):
    """SIGTERM handler: unwind as for Ctrl-C, so that the outputs' temporary files go."""
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run the demo.

    Returns:
        int: the number of frames processed.

    Raises:
        FileNotFoundError / OSError: a missing or unreadable input, weights that do not exist
            or cannot be fetched, an output that cannot be written. ValueError: a config key
            that does not exist, weights trained for another class count, a video without
            frames. RuntimeError: no working codec.
    """
    args = parse_args(get_parser(), argv)
    setup_logger(name="fvcore")
    setup_logger(name="vod_d2")
    logger.info(f"Arguments: {args}")

    # Inputs and outputs are checked before the model is built, to fail fast.
    frames, num_frames, fps, video_id = _open_source(args)
    if args.exported:
        metadata = None
        if args.config_file:
            metadata = dataset_metadata(setup_cfg(args))
        predictor = ExportedPredictor(args.exported, args.backend, metadata)
    else:
        cfg = setup_cfg(args)
        _check_weights(cfg)
        predictor = VideoPredictor(cfg)
    metadata = predictor.metadata
    sinks = []
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_system_exit) if in_main_thread else None
    try:
        sink = _make_sink(args, frames, fps) if args.output else None
        sinks.append(sink)
        json_sink = JsonSink(args.json, video_id, metadata) if args.json else None
        sinks.append(json_sink)
        sinks = [s for s in sinks if s is not None]
        drawer = FrameDrawer(metadata, args.confidence_threshold)
        start = time.perf_counter()
        count = annotate(predictor, video_id, frames, num_frames, drawer, sink, json_sink)
        elapsed = time.perf_counter() - start
        for s in sinks:
            s.finish()
        for s in sinks:
            s.commit()
    except BaseException:
        for s in sinks:
            if s is not None:
                s.abort()
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    logger.info(f"Processed {count} frames in {elapsed:.1f} s ({count / elapsed:.2f} frames/s)")
    if sink is not None:
        logger.info(f"Annotated frames written to {getattr(sink, 'path', None) or sink.folder}")
    if json_sink is not None:
        logger.info(f"{len(json_sink.results)} detections written to {json_sink.path}")
    return count


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"demo.py: error: {e}")
