"""VideoPredictor: detectron2's DefaultPredictor for the frames of a video, in a stream."""

import logging
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..checkpoint import VideoCheckpointer
from ..data import dataset_classes, register_datasets_from_config
from ..modeling import VideoDetector
from .trainer import build_video_postprocess

__all__ = ["VideoPredictor", "VideoReader"]

logger = logging.getLogger(__name__)

FrameResult = Tuple[int, Instances]


class VideoReader:
    """
    The frames of a video file, decoded with OpenCV one at a time (BGR uint8 (H, W, 3) arrays).

    The file is checked when the reader is made: a missing file raises ``FileNotFoundError``
    and one OpenCV cannot open raises ``OSError``, both naming it. Each iteration decodes the
    video again from its first frame and raises ``ValueError`` if not a single frame decodes
    (an empty or corrupt video); it warns, with both counts, when fewer frames decode than the
    container announces (a truncated or partly corrupt file).

    Attributes:
        path (str): the video file.
        fps (float): frames per second stored in the container (0 if unknown).
        num_frames (int): number of frames the container announces (an estimate for some
            codecs; 0 if unknown).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        self._warned = False
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"video file {self.path!r} does not exist")
        capture = self._open()
        try:
            import cv2

            self.fps = max(float(capture.get(cv2.CAP_PROP_FPS) or 0.0), 0.0)
            self.num_frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        finally:
            capture.release()

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = self._open()
        try:
            num_read = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                num_read += 1
                yield frame
        finally:
            capture.release()
        if num_read == 0:
            raise ValueError(
                f"no frame could be decoded from {self.path!r}: the video is empty or corrupt"
            )
        if num_read < self.num_frames and not self._warned:
            self._warned = True
            logger.warning(
                f"{self.path}: decoded {num_read} frames, but the container announces "
                f"{self.num_frames}; the file is truncated or partly corrupt"
            )

    def _open(self):
        import cv2  # only video files need OpenCV

        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            capture.release()
            raise OSError(f"OpenCV cannot open {self.path!r} as a video (unknown or bad format)")
        return capture


def dataset_metadata(cfg):
    """
    Metadata of the config's first test dataset (its class names and category ids, declared by
    ``DATASETS.FILE`` when it is one of the user's: a CocoVID json's categories are read without
    loading the dataset), with a warning when there is none to use.
    """
    register_datasets_from_config(cfg)
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
    if name is None or name not in DatasetCatalog.list():
        problem = "is empty" if name is None else f"names {name!r}, which is not registered"
        logger.warning(
            f"DATASETS.TEST {problem}: labels are drawn as class indices and --json category_id "
            "are the model's class indices; name the training data's test set (declared in "
            "DATASETS.FILE) to use its class names and category ids"
        )
        return MetadataCatalog.get("__unused")
    if dataset_classes(name) is None:
        logger.warning(f"Dataset {name!r} has no thing_classes: labels are drawn as class indices")
    return MetadataCatalog.get(name)


class VideoPredictor:
    """
    Runs a video model on the frames of one video at a time, the video counterpart of
    detectron2's ``DefaultPredictor``. Compared to calling the model directly it:

    1. builds the model of ``cfg`` and loads ``cfg.MODEL.WEIGHTS`` (refusing, in one line,
       weights trained for another class count: :class:`~vod_d2.checkpoint.VideoCheckpointer`);
    2. takes BGR frames (as OpenCV decodes them) and converts them to ``cfg.INPUT.FORMAT``;
    3. resizes them with ``ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST)``, one
       transform for the whole video (all its frames must have the same size);
    4. feeds them to the model's streaming API (:class:`vod_d2.modeling.VideoDetector`), so
       each frame goes through the backbone once and the model's own support gives the
       look-ahead of offline methods or the memory of online ones. A model with whole-video
       support (SparseVOD) reads a video file twice: a first pass decodes every frame and runs
       the model on its sampled support frames only, the second streams the video; frames
       given as an iterable (unknown length) use the model's online variant instead;
    5. returns ``(frame_index, Instances)`` for every frame, in order, with boxes in the
       coordinates of the original frame.

    Memory is bounded by the model's support whatever the video's length: the predictor keeps
    no frame, and results come out as soon as the model's support allows (an offline model with a
    look-ahead of K frames returns frame ``t`` when frame ``t + K`` is put; the single-frame
    baseline returns every frame at once).

    With ``cfg.TEST.SEQ_NMS.ENABLED``, Seq-NMS (:func:`build_video_postprocess`) needs the
    whole video's detections: :meth:`put` then returns nothing and :meth:`flush` returns all
    frames' rescored results at the end of the video, with a ``seq_ids`` field. Only the
    detections are held until then, never the frames.

    Attributes:
        cfg (CfgNode): a copy of the config.
        model (nn.Module): the video model, in eval mode.
        metadata (Metadata): metadata of ``cfg.DATASETS.TEST[0]`` (class names for drawing,
            the dataset's category ids; :func:`dataset_metadata`), or of an unnamed dataset.
        video_postprocess (callable or None): the whole-video post-processing (Seq-NMS).

    Examples:
    ::
        predictor = VideoPredictor(cfg)
        for frame_index, instances in predictor.run_video("input.mp4"):
            ...
        # or, frame by frame:
        predictor.reset()
        for frame in frames:
            for frame_index, instances in predictor.put(frame):
                ...
        for frame_index, instances in predictor.flush():
            ...
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): a vod_d2 config (see :func:`vod_d2.add_vod_config`) whose meta
                architecture has the streaming API; ``MODEL.WEIGHTS`` may be empty.
        """
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        if not isinstance(self.model, VideoDetector):
            raise TypeError(
                f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} is not a video "
                "meta-architecture (vod_d2.modeling.VideoDetector, e.g. VideoRCNN)"
            )
        self.model.eval()
        self.metadata = dataset_metadata(self.cfg)
        VideoCheckpointer(self.model, cfg=self.cfg).load(cfg.MODEL.WEIGHTS)

        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        self.video_postprocess = build_video_postprocess(self.cfg)
        self.reset()

    def reset(self, video_name: str = "video", num_frames: Optional[int] = None):
        """
        Start a new video: forget the frames, windows and detections of the previous one.

        Args:
            video_name: the video's name, passed to the model as the frames' ``video_id``.
            num_frames: the video's length where known (see :meth:`prefetch_indices`).
        """
        self.model.reset(num_frames)
        self._video_name = video_name
        self._num_frames = 0
        self._frame_shape: Optional[Tuple[int, int]] = None
        self._transform: Optional[T.Transform] = None
        self._detections: List[FrameResult] = []

    def prefetch_indices(self) -> List[int]:
        """Frames of the current video to :meth:`prime` before it is streamed with :meth:`put`
        (models with whole-video support, when :meth:`reset` was given the length)."""
        return self.model.prefetch_indices()

    @torch.no_grad()
    def prime(self, index: int, frame: np.ndarray):
        """Give the model frame ``index`` of the video ahead of the stream (BGR (H, W, 3))."""
        self.model.prime(self._frame_dict(frame, index), index)

    @torch.no_grad()
    def put(self, frame: np.ndarray) -> List[FrameResult]:
        """
        Feed the next frame of the current video.

        Args:
            frame (ndarray): (H, W, 3) uint8 image in BGR order, the same size as the video's
                first frame.

        Returns:
            list[(int, Instances)]: the results that became ready, in frame order: the frame
            index in the video and its detections (``pred_boxes`` in the frame's pixels,
            ``scores``, ``pred_classes``). Empty while an offline window fills, and always
            with Seq-NMS (see :meth:`flush`).
        """
        frame_dict = self._frame_dict(frame, self._num_frames)
        self._num_frames += 1
        return self._emit(self.model.step(frame_dict))

    @torch.no_grad()
    def flush(self) -> List[FrameResult]:
        """
        End the current video: the results of its pending frames (all frames with Seq-NMS,
        rescored). The next :meth:`put` starts a new video.

        Returns:
            list[(int, Instances)]: as :meth:`put`.
        """
        done = self._emit(self.model.flush())
        if self.video_postprocess is not None and self._detections:
            done = [
                (meta["frame_idx"], output["instances"])
                for meta, output in self.video_postprocess(
                    [({"frame_idx": t}, {"instances": inst}) for t, inst in self._detections]
                )
            ]
        self.reset(self._video_name)
        return done

    def run_video(
        self, video: Union[str, os.PathLike, Iterable[np.ndarray]]
    ) -> Iterator[FrameResult]:
        """
        Run the model over a whole video.

        Args:
            video: a video file OpenCV can read, or an iterable of BGR (H, W, 3) uint8 frames.

        Returns:
            Iterator[(int, Instances)]: every frame's result, in order, as soon as it is ready
            (all at the end with Seq-NMS). A missing or unreadable file raises here, before
            iterating; a video without a decodable frame raises ``ValueError`` when iterated.
        """
        if isinstance(video, (str, os.PathLike)):
            reader = VideoReader(video)
            return self._run(reader, reader.path, reader.num_frames or None)
        return self._run(video, "video", None)

    def _run(
        self, frames: Iterable[np.ndarray], name: str, num_frames: Optional[int]
    ) -> Iterator[FrameResult]:
        self.reset(name, num_frames)
        wanted = self.prefetch_indices()
        if wanted:
            self._prefetch(frames, name, set(wanted))
        for frame in frames:
            yield from self.put(frame)
        if self._num_frames == 0:
            raise ValueError(f"video {name!r} has no frames")
        yield from self.flush()

    def _prefetch(self, frames: Iterable[np.ndarray], name: str, wanted: set):
        """First pass over a video file: prime the wanted frames, decoding each frame once. A
        file that decodes fewer frames than announced is planned again on its true length."""
        found = 0
        for index, frame in enumerate(frames):
            found = index + 1
            if index in wanted:
                self.prime(index, frame)
        if found and max(wanted) >= found:
            self.reset(name, found)
            self._prefetch(frames, name, set(self.prefetch_indices()))

    def _frame_dict(self, frame: np.ndarray, index: int) -> Dict:
        """The model's test input for BGR frame ``index`` (same keys as the test mapper's)."""
        if not isinstance(frame, np.ndarray):
            raise TypeError(
                f"frame {index} of video {self._video_name!r} must be a numpy array, "
                f"got {type(frame).__name__}"
            )
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"frame {index} of video {self._video_name!r} must be a (H, W, 3) "
                f"uint8 BGR array, got {frame.dtype} {frame.shape}"
            )
        height, width = frame.shape[:2]
        if self._frame_shape is None:
            self._frame_shape = (height, width)
            self._transform = self.aug.get_transform(frame)
        elif (height, width) != self._frame_shape:
            raise ValueError(
                f"frame {index} of video {self._video_name!r} is {height}x{width}, "
                f"but its first frame is {self._frame_shape[0]}x{self._frame_shape[1]}"
            )
        if self.input_format == "RGB":
            frame = frame[:, :, ::-1]
        image = self._transform.apply_image(frame)
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
            "image_id": index,
            "video_id": self._video_name,
            "frame_idx": index,
        }

    def _emit(self, done: List[Tuple[Dict, Dict]]) -> List[FrameResult]:
        """Model outputs -> (frame index, Instances); held back when Seq-NMS needs the video."""
        results = [(meta["frame_idx"], output["instances"]) for meta, output in done]
        if self.video_postprocess is None:
            return results
        self._detections.extend(results)
        return []
