"""Random access to the frames of a test dataset's videos, by video and position."""

from collections import defaultdict
from typing import Callable, Dict, List, Sequence

__all__ = ["VideoFrameSource"]


class VideoFrameSource:
    """
    The frames of a test dataset, by video: each video's length and any of its frames mapped
    by the test mapper. :func:`vod_d2.engine.inference_on_videos` uses it to tell a model the
    length of every video, and to read the frames a model with whole-video support prefetches
    (``frame(video_id, index)`` reads that one frame, so no other frame is decoded twice).

    Frame ``index`` of a video is its position in the video's records sorted by ``frame_idx``,
    the order in which the test loader streams them.
    """

    def __init__(self, records: Sequence[Dict], mapper: Callable[[Dict], Dict]):
        """
        Args:
            records: the dataset's frame records (any order).
            mapper: maps a record to the model's test input (e.g. the test-mode
                :class:`vod_d2.data.VideoDatasetMapper`).
        """
        videos: Dict[str, List[Dict]] = defaultdict(list)
        for record in records:
            videos[record["video_id"]].append(record)
        self._videos = {
            v: sorted(frames, key=lambda r: r["frame_idx"]) for v, frames in videos.items()
        }
        self._mapper = mapper

    def video_length(self, video_id: str) -> int:
        """Number of frames the dataset holds for ``video_id``."""
        return len(self._frames(video_id))

    def frame(self, video_id: str, index: int) -> Dict:
        """The mapped ``index``-th frame of ``video_id``."""
        frames = self._frames(video_id)
        if not 0 <= index < len(frames):
            raise IndexError(f"video {video_id!r} has {len(frames)} frames, no frame {index}")
        return self._mapper(frames[index])

    def _frames(self, video_id: str) -> List[Dict]:
        if video_id not in self._videos:
            raise KeyError(f"video {video_id!r} is not in this dataset")
        return self._videos[video_id]
