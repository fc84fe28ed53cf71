"""Inference over a video test loader, feeding a DatasetEvaluator."""

import datetime
import logging
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from detectron2.evaluation import DatasetEvaluator, inference_context
from detectron2.utils.comm import get_world_size
from detectron2.utils.logger import log_every_n_seconds
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["run_on_video", "inference_on_videos"]

logger = logging.getLogger(__name__)

VideoPostprocess = Callable[[List[Tuple[Dict, Dict]]], List[Tuple[Dict, Dict]]]


def run_on_video(model: nn.Module, frames: Iterable[Dict]):
    """
    Stream the frames of one video through a video model.

    Args:
        model: a model with the streaming API (``reset``, ``step``, ``flush``) such as
            :class:`vod_d2.modeling.VideoRCNN`, in eval mode.
        frames: the video's frame dicts in order.

    Yields:
        tuple: (frame metadata, ``{"instances": Instances}``) for every frame, in order, as soon
        as the model's window allows.
    """
    model.reset()
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
    (one frame per batch, videos in order) and evaluate it, the video analogue of detectron2's
    ``inference_on_dataset``. The model's state is reset at every new video.

    Args:
        model: a video model with the streaming API, or a DDP wrapper of one.
        data_loader: yields lists holding one frame dict.
        evaluator: receives ``process([frame], [output])`` for every frame; None to only run.
        video_postprocess: applied to a whole video's ``(frame, output)`` list before the
            evaluator sees it (e.g. Seq-NMS). It buffers one video's detections.

    Returns:
        The evaluator's results (``{}`` without evaluator).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    logger.info(f"Start inference on {len(data_loader)} frames")
    if evaluator is not None:
        evaluator.reset()

    video_id, video_outputs = None, []

    def evaluate(done):
        if evaluator is not None:
            for frame, output in done:
                evaluator.process([frame], [output])

    def emit(done):
        # Without post-processing, results go straight to the evaluator; with it, only the
        # current video's detections are held (its frames are never buffered).
        if video_postprocess is None:
            evaluate(done)
        else:
            video_outputs.extend(done)

    def end_video():
        emit(model.flush())
        if video_postprocess is not None:
            evaluate(video_postprocess(video_outputs))
            video_outputs.clear()

    num_frames, start = 0, time.perf_counter()
    with inference_context(model), torch.no_grad():
        for batch in data_loader:
            for frame in batch:
                if frame["video_id"] != video_id:
                    if video_id is not None:
                        end_video()
                    model.reset()
                    video_id = frame["video_id"]
                emit(model.step(frame))
                num_frames += 1
            log_every_n_seconds(
                logging.INFO, f"Inference done {num_frames}/{len(data_loader)} frames", n=10
            )
        if video_id is not None:
            end_video()
    total = time.perf_counter() - start
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=int(total))} "
        f"({total / max(num_frames, 1):.4f} s / frame on {get_world_size()} device(s))"
    )
    return evaluator.evaluate() if evaluator is not None else {}
