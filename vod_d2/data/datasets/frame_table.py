"""
Frame table: ``video_id -> file names of all its frames, ordered by frame index``.

The training mapper reads support frames through it, and support frames may be frames that
have no record (``VID_train_15frames.txt`` lists 15 frames of each snippet). For such videos
the table derives the missing names from the numbered file names of the listed frames
(``000010.JPEG`` is frame 10), without storing a string per frame.
"""

import os
from collections.abc import Sequence
from typing import Dict, Iterable, List, Union

__all__ = ["NumberedFrames", "build_frame_table"]


class NumberedFrames(Sequence):
    """
    File names ``<directory>/<number><suffix>`` of the frames of one video, ``number`` being
    ``frame_idx + start`` zero-padded to ``width`` digits, computed on access.
    """

    __slots__ = ("directory", "length", "width", "start", "suffix")

    def __init__(self, directory: str, length: int, width: int, start: int, suffix: str):
        """
        Args:
            directory: folder of the frames.
            length: number of frames of the video.
            width: digits of the zero-padded frame number.
            start: number of frame 0 (1 for one-based names).
            suffix: extension, with its dot.
        """
        self.directory, self.length, self.width = directory, length, width
        self.start, self.suffix = start, suffix

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"frame {index} is outside {self!r}")
        name = f"{index + self.start:0{self.width}d}{self.suffix}"
        return os.path.join(self.directory, name)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return (
            f"NumberedFrames({self.directory!r}, length={self.length}, width={self.width}, "
            f"start={self.start}, suffix={self.suffix!r})"
        )

    def __getstate__(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state):
        for key, value in zip(self.__slots__, state):
            setattr(self, key, value)


def build_frame_table(records: Iterable[dict]) -> Dict[str, Sequence]:
    """
    The frame table of all videos of ``records`` (one or several concatenated datasets).

    A video whose records cover all ``video_length`` frames maps to their file names. A video
    with missing frames maps to a :class:`NumberedFrames` that the listed frames' file names
    determine; this needs them to be numbered consistently (``<digits><ext>`` with
    number - frame_idx the same for all).

    Build it from the unfiltered records: filtering empty frames first is allowed only where
    the names of the frames left out can be derived.

    Args:
        records: frame records with ``video_id``, ``frame_idx``, ``video_length``, ``file_name``.

    Returns:
        dict[str, Sequence[str]]: ``video_id -> file names indexed by frame_idx``.

    Raises:
        ValueError: naming the video, when its records disagree on its length, repeat a frame
            with two different files, have a frame outside the video, or have missing frames
            whose names cannot be derived.
    """
    videos: Dict[str, tuple] = {}  # video_id -> (length, {frame_idx: file_name})
    for record in records:
        video_id, index, name = record["video_id"], record["frame_idx"], record["file_name"]
        length, frames = videos.setdefault(video_id, (record["video_length"], {}))
        if record["video_length"] != length:
            raise ValueError(
                f"Video {video_id!r} has records with video_length {length} and "
                f"{record['video_length']}"
            )
        if not 0 <= index < length:
            raise ValueError(
                f"Video {video_id!r}: frame {index} ({name}) is outside 0..{length - 1}"
            )
        if frames.setdefault(index, name) != name:
            raise ValueError(
                f"Video {video_id!r}: frame {index} is both {frames[index]} and {name} "
                "(two datasets with the same video id?)"
            )
    table: Dict[str, Sequence] = {}
    for video_id, (length, frames) in videos.items():
        if len(frames) == length:
            table[video_id] = tuple(frames[i] for i in range(length))
        else:
            table[video_id] = _numbered_frames(video_id, length, frames)
    return table


def _numbered_frames(video_id: str, length: int, frames: Dict[int, str]) -> NumberedFrames:
    index, name = next(iter(frames.items()))
    directory, base = os.path.split(name)
    stem, suffix = os.path.splitext(base)
    if stem.isdigit():
        pattern = NumberedFrames(directory, length, len(stem), int(stem) - index, suffix)
        if pattern.start >= 0 and all(pattern[i] == n for i, n in frames.items()):
            return pattern
    missing: List[int] = sorted(set(range(length)) - set(frames))
    raise ValueError(
        f"Video {video_id!r} has records for {len(frames)} of its {length} frames (missing "
        f"{missing[:3]}{'...' if len(missing) > 3 else ''}) and its file names (e.g. {name}) "
        "are not numbered by frame index, so the missing frames' files are unknown"
    )
