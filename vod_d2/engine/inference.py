"""Inference over a video test loader, feeding a DatasetEvaluator."""

import datetime
import functools
import itertools
import logging
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from detectron2.evaluation import DatasetEvaluator, inference_context
from detectron2.utils.comm import get_world_size
from detectron2.utils.logger import log_every_n_seconds
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..modeling import VideoDetector

__all__ = ["run_on_video", "inference_on_videos"]

logger = logging.getLogger(__name__)

VideoPostprocess = Callable[[List[Tuple[Dict, Dict]]], List[Tuple[Dict, Dict]]]


def run_on_video(
    model: VideoDetector,
    frames: Iterable[Dict],
    video_length: Optional[int] = None,
    frame_at: Optional[Callable[[int], Dict]] = None,
):
    """
    Stream the frames of one video through a video model (the core's streaming API).

    Args:
        model: a :class:`vod_d2.modeling.VideoDetector` in eval mode.
        frames: the video's frame dicts in order.
        video_length: the number of frames, where known. Whole-video support needs it (and
            ``frame_at``); without it such a model uses its online variant (past frames).
        frame_at: ``frame_at(index)`` returns frame ``index``'s dict, for the frames the model
            asks to prefetch (:meth:`~vod_d2.modeling.VideoDetector.prefetch_indices`).

    Yields:
        tuple: (frame metadata, ``{"instances": Instances}``) for every frame, in order, as soon
        as the model's support allows.
    """
    model.reset(video_length)
    wanted = model.prefetch_indices()
    if wanted:
        if frame_at is None:
            raise ValueError(
                f"{type(model).__name__} reads support frames from the whole video: pass "
                "frame_at to prefetch them, or video_length=None for its online variant"
            )
        for index in wanted:
            model.prime(frame_at(index), index)
    for frame in frames:
        yield from model.step(frame)
    yield from model.flush()


def inference_on_videos(
    model: nn.Module,
    data_loader: Iterable[List[Dict]],
    evaluator: Optional[DatasetEvaluator],
    video_postprocess: Optional[VideoPostprocess] = None,
):
    """
    Run a video model over a test loader of :func:`vod_d2.data.build_video_test_loader`
    (one frame per batch, videos in order, whole on one rank) and evaluate it, the video
    analogue of detectron2's ``inference_on_dataset``. Each video goes through
    :func:`run_on_video`, so the model is reset at every new video. The loader's
    ``frame_source`` (:class:`vod_d2.data.VideoFrameSource`) gives each video's length and
    random access to the frames a whole-video-support model prefetches; a loader without one
    streams videos of unknown length.

    Args:
        model: a :class:`vod_d2.modeling.VideoDetector`, or a DDP wrapper of one.
        data_loader: yields lists holding one frame dict.
        evaluator: receives ``process([frame], [output])`` for every frame; None to only run.
        video_postprocess: applied to a whole video's ``(frame, output)`` list before the
            evaluator sees it (e.g. Seq-NMS). It buffers one video's detections.

    Returns:
        The evaluator's results (``{}`` without evaluator).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    source = getattr(data_loader, "frame_source", None)
    logger.info(f"Start inference on {len(data_loader)} frames")
    if evaluator is not None:
        evaluator.reset()

    def evaluate(done):
        if evaluator is not None:
            for frame, output in done:
                evaluator.process([frame], [output])

    counter = itertools.count(1)

    def frames():
        for batch in data_loader:
            for frame in batch:
                yield frame
                num = next(counter)
                log_every_n_seconds(
                    logging.INFO, f"Inference done {num}/{len(data_loader)} frames", n=10
                )

    start = time.perf_counter()
    with inference_context(model), torch.no_grad():
        for video_id, video in itertools.groupby(frames(), key=lambda f: f["video_id"]):
            length = source.video_length(video_id) if source is not None else None
            frame_at = functools.partial(source.frame, video_id) if source is not None else None
            done = run_on_video(model, video, length, frame_at)
            # Without post-processing, results go straight to the evaluator; with it, only the
            # current video's detections are held (its frames are never buffered).
            if video_postprocess is None:
                evaluate(done)
            else:
                evaluate(video_postprocess(list(done)))
    num_frames = next(counter) - 1
    total = time.perf_counter() - start
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=int(total))} "
        f"({total / max(num_frames, 1):.4f} s / frame on {get_world_size()} device(s))"
    )
    return evaluator.evaluate() if evaluator is not None else {}
