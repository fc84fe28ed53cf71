"""Dataset mapper that turns a frame record into a reference frame plus its support frames."""

import copy
import logging
import pickle
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import UnidentifiedImageError

from .frame_sampling import FrameSampler

__all__ = ["AnnotationTable", "FrameReadError", "VideoDatasetMapper", "read_frame"]

logger = logging.getLogger(__name__)


class VideoDatasetMapper(DatasetMapper):
    """
    Maps a frame record (see :mod:`vod_d2.data.datasets`) to the model's input dict.

    In training, the record is a reference frame: the mapper draws its support frames with a
    :class:`FrameSampler`, reads them through ``frame_table``, samples one augmentation for the
    reference and applies that same :class:`TransformList` to every support frame, so all
    frames of a sample share resize and flip. The output adds to :class:`DatasetMapper`'s:

    * ``support_images`` (list[Tensor]): S tensors (C, H, W), same size as ``image``.
    * ``support_offsets`` (list[int]): S frame offsets ``support_idx - frame_idx``.
    * ``support_instances`` (list[Instances or None]), with an ``annotation_table``: the S
      support frames' annotations, transformed like the reference's; None for a frame that has
      no record (not annotated), empty Instances for an annotated frame without objects.

    At test time it maps the frame alone (the model caches features across frames), so each
    frame of a video is read exactly once.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        frame_sampler: FrameSampler,
        frame_table: Optional[Mapping[str, Sequence[str]]] = None,
        annotation_table: Optional["AnnotationTable"] = None,
        **kwargs,
    ):
        """
        Args:
            is_train: whether to map training samples (with support frames and annotations).
            frame_sampler: rule choosing the support frames of a training sample.
            frame_table: ``video_id -> file names ordered by frame index``, covering every frame
                a support frame may be drawn from; required when the rule has support frames.
            annotation_table: the annotations of the frames that have a record, to add the
                support frames' ``support_instances``; None adds none.
            kwargs: arguments of :class:`DatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        if is_train and frame_sampler.length and frame_table is None:
            raise ValueError(f"sampling rule {frame_sampler.rule!r} needs a frame table")
        self.frame_sampler = frame_sampler
        self.frame_table = frame_table
        self.annotation_table = annotation_table

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, frame_table=None, annotation_table=None):
        ret = super().from_config(cfg, is_train)
        ret["frame_sampler"] = FrameSampler.from_config(cfg)
        ret["frame_table"] = frame_table
        ret["annotation_table"] = annotation_table
        return ret

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one frame record.

        Returns:
            dict: the model's input (see the class docstring).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_frame(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = _to_chw_tensor(image)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict

        # Drawn from numpy's global generator, like the augmentations: detectron2 seeds it per
        # data-loader worker, so a fixed SEED gives the same samples.
        rng = np.random.default_rng(np.random.randint(2**31))
        offsets = self.frame_sampler(dataset_dict["frame_idx"], dataset_dict["video_length"], rng)
        dataset_dict["support_offsets"] = offsets
        dataset_dict["support_images"] = [
            self._read_support(dataset_dict, o, transforms, image_shape) for o in offsets
        ]
        self._transform_annotations(dataset_dict, transforms, image_shape)
        if self.annotation_table is not None:
            dataset_dict["support_instances"] = self._support_instances(
                dataset_dict, offsets, transforms, image_shape
            )
        return dataset_dict

    def _support_instances(self, dataset_dict, offsets, transforms, image_shape) -> List:
        """The support frames' Instances (None without a record), with the sample's transforms."""
        frames = self.annotation_table.frames(dataset_dict["video_id"]) if any(offsets) else {}
        by_frame = {0: dataset_dict["instances"]}
        for offset in offsets:
            if offset in by_frame:
                continue
            annotations = frames.get(dataset_dict["frame_idx"] + offset)
            if annotations is None:
                by_frame[offset] = None
                continue
            frame = {"annotations": annotations}
            self._transform_annotations(frame, transforms, image_shape)
            by_frame[offset] = frame["instances"]
        return [by_frame[o] for o in offsets]

    def _read_support(self, dataset_dict, offset, transforms, image_shape) -> torch.Tensor:
        """Read the frame at ``offset`` from the reference and apply the sample's transforms."""
        if offset == 0:
            return dataset_dict["image"]
        video_id = dataset_dict["video_id"]
        frames = self.frame_table.get(video_id)
        index = dataset_dict["frame_idx"] + offset
        if frames is None or not 0 <= index < len(frames):
            raise KeyError(f"frame {index} of video {video_id!r} is not in the frame table")
        image = read_frame(frames[index], self.image_format)
        image = transforms.apply_image(image)
        if image.shape[:2] != image_shape:
            raise ValueError(
                f"{frames[index]} has size {image.shape[:2]} after augmentation, but the "
                f"reference frame of video {video_id!r} has {image_shape}"
            )
        return _to_chw_tensor(image)


class FrameReadError(OSError):
    """
    A frame file that cannot be read: missing, truncated, or not an image.

    ``str()`` is one line naming the file, also when a data-loader worker raised it: PyTorch
    then raises it again in the main process with the worker's traceback in its message, whose
    last line is the original message.
    """

    def __str__(self) -> str:
        last = (super().__str__().rstrip().splitlines() or [""])[-1]
        return last.split(f"{type(self).__name__}: ", 1)[-1]


def read_frame(path: str, image_format: str) -> np.ndarray:
    """
    detectron2's ``read_image``, with errors naming the file: PIL's ``OSError: cannot load
    this image`` (or ``image file is truncated``) for a corrupt frame does not.

    Returns:
        ndarray: (H, W, C) image in ``image_format``.

    Raises:
        FrameReadError: naming the file, when it is missing or cannot be decoded.
    """
    try:
        return utils.read_image(path, format=image_format)
    except FileNotFoundError:
        raise FrameReadError(f"Cannot read the frame {path}: it does not exist") from None
    except UnidentifiedImageError:  # its message repeats the path, as a file object's repr
        raise FrameReadError(f"Cannot read the frame {path}: not an image PIL knows") from None
    except OSError as e:
        raise FrameReadError(f"Cannot read the frame {path}: {e}") from e


class AnnotationTable:
    """
    ``video_id -> {frame_idx: annotations}`` for the frames of multi-frame videos that have a
    record (``annotations`` may be empty: an annotated frame without objects). Each video's
    frames are kept pickled, so that the data-loader workers share bytes rather than Python
    objects, which reading would copy into every worker.
    """

    def __init__(self, records: Iterable[dict]):
        """
        Args:
            records: frame records with ``video_id``, ``frame_idx``, ``video_length`` and
                ``annotations`` (build it from the unfiltered records, like the frame table).
        """
        videos: Dict[str, Dict[int, list]] = defaultdict(dict)
        for record in records:
            # A one-frame video's support frames are the frame itself: no lookup.
            if record["video_length"] > 1 and "annotations" in record:
                videos[record["video_id"]][record["frame_idx"]] = record["annotations"]
        self._videos = {v: pickle.dumps(frames, protocol=-1) for v, frames in videos.items()}

    def frames(self, video_id: str) -> Dict[int, list]:
        """A fresh copy of the video's ``{frame_idx: annotations}`` (empty if it has none)."""
        blob = self._videos.get(video_id)
        return {} if blob is None else pickle.loads(blob)


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> contiguous (C, H, W) tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
