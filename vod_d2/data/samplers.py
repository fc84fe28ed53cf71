"""Samplers: VID/DET mixing for training, whole-video sharding for inference."""

import itertools
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler

__all__ = ["MixedVideoTrainingSampler", "VideoInferenceSampler"]


class MixedVideoTrainingSampler(Sampler):
    """
    Infinite stream of training indices that mixes video frames and one-frame (DET) images.

    Each index comes from the DET pool with probability ``det_ratio`` and from the video pool
    otherwise, uniformly within its pool. A negative ``det_ratio`` (or a dataset with only one
    kind) shuffles all indices together, as the ImageNet VID+DET protocol does by concatenating
    the two lists. All ranks draw the same stream from ``seed`` and take every
    ``world_size``-th index, like detectron2's ``TrainingSampler``.
    """

    def __init__(self, is_det: Sequence[bool], det_ratio: float, seed: Optional[int] = None):
        """
        Args:
            is_det: for every dataset index, whether it is a one-frame (DET) sample.
            det_ratio: probability of drawing a DET sample; negative to mix by pool sizes.
            seed: seed shared by all ranks; ``None`` draws one shared random seed.
        """
        is_det = np.asarray(is_det, dtype=bool)
        if is_det.size == 0:
            raise ValueError("MixedVideoTrainingSampler needs a non-empty dataset")
        if det_ratio > 1:
            raise ValueError(f"DATALOADER.DET_RATIO must be <= 1, got {det_ratio}")
        self._det = torch.from_numpy(np.flatnonzero(is_det))
        self._vid = torch.from_numpy(np.flatnonzero(~is_det))
        if not (len(self._det) and len(self._vid)) or det_ratio < 0:
            det_ratio = -1.0
        self._ratio = det_ratio
        self._size = len(is_det)
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self):
        g = torch.Generator().manual_seed(self._seed)
        chunk = 1024
        while True:
            if self._ratio < 0:
                yield from torch.randperm(self._size, generator=g).tolist()
                continue
            from_det = torch.rand(chunk, generator=g) < self._ratio
            det = self._det[torch.randint(len(self._det), (chunk,), generator=g)]
            vid = self._vid[torch.randint(len(self._vid), (chunk,), generator=g)]
            yield from torch.where(from_det, det, vid).tolist()


class VideoInferenceSampler(Sampler):
    """
    Indices of a test set ordered by video and frame, with whole videos assigned to ranks
    (never split), balancing the number of frames per rank greedily.
    """

    def __init__(self, video_ids: Sequence[str]):
        """
        Args:
            video_ids: video id of every dataset index; the frames of a video must be contiguous
                and in frame order, as the dataset loaders return them.
        """
        starts = [i for i in range(len(video_ids)) if i == 0 or video_ids[i] != video_ids[i - 1]]
        bounds = list(zip(starts, starts[1:] + [len(video_ids)]))
        if len({video_ids[s] for s, _ in bounds}) != len(bounds):
            raise ValueError("VideoInferenceSampler: the frames of each video must be contiguous")
        rank, world_size = comm.get_rank(), comm.get_world_size()
        loads = [0] * world_size
        mine: List[range] = []
        for begin, end in sorted(bounds, key=lambda b: b[0] - b[1]):
            target = int(np.argmin(loads))
            loads[target] += end - begin
            if target == rank:
                mine.append(range(begin, end))
        self._indices = [i for r in sorted(mine, key=lambda r: r.start) for i in r]

    def __iter__(self):
        yield from self._indices

    def __len__(self):
        return len(self._indices)
