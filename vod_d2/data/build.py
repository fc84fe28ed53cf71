"""Training and test data loaders for video datasets."""

import logging

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations

from .datasets import build_frame_table
from .mapper import AnnotationTable, VideoDatasetMapper
from .samplers import MixedVideoTrainingSampler, VideoInferenceSampler
from .video_source import VideoFrameSource

__all__ = ["build_video_train_loader", "build_video_test_loader"]

logger = logging.getLogger(__name__)


def build_video_train_loader(cfg, mapper=None):
    """
    Loader of training samples (reference + support frames) from ``cfg.DATASETS.TRAIN``.

    The frame table is built from all frames, so support frames may be frames without
    annotations; only reference frames are filtered by
    ``cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS``. One-frame videos count as DET samples for
    ``cfg.DATALOADER.DET_RATIO``.

    Args:
        cfg: a config with the vod_d2 keys.
        mapper: callable mapping a frame record to the model's input; defaults to
            :class:`VideoDatasetMapper` over the datasets' frame table.
    """
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    if mapper is None:
        mapper = VideoDatasetMapper(
            cfg,
            is_train=True,
            frame_table=build_frame_table(records),
            annotation_table=AnnotationTable(records),
        )
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        records = filter_images_with_only_crowd_annotations(records)
    if not records:
        raise ValueError(f"DATASETS.TRAIN={tuple(cfg.DATASETS.TRAIN)} has no annotated frame")
    sampler = MixedVideoTrainingSampler(
        [r["video_length"] == 1 for r in records], cfg.DATALOADER.DET_RATIO, seed=_seed(cfg)
    )
    return build_detection_train_loader(
        records,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_video_test_loader(cfg, dataset_name, mapper=None):
    """
    Loader that yields the frames of ``dataset_name`` one at a time, video after video, each
    video in frame order and whole on one rank. Every frame is read once by the stream; the
    loader's ``frame_source`` attribute (:class:`VideoFrameSource`) gives the videos' lengths
    and random access to single frames (for models that prefetch support frames).

    Args:
        cfg: a config with the vod_d2 keys.
        dataset_name (str): a registered video dataset.
        mapper: defaults to the test-mode :class:`VideoDatasetMapper`.
    """
    records = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    records = sorted(records, key=lambda r: (r["video_id"], r["frame_idx"]))
    if mapper is None:
        mapper = VideoDatasetMapper(cfg, is_train=False)
    loader = build_detection_test_loader(
        records,
        mapper=mapper,
        sampler=VideoInferenceSampler([r["video_id"] for r in records]),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    loader.frame_source = VideoFrameSource(records, mapper)
    return loader


def _seed(cfg):
    """The config's seed, or None to draw one shared by all ranks."""
    return cfg.SEED if cfg.SEED >= 0 else None
