"""
Frames as the streaming core sees them: their metadata (:class:`FrameInfo`), the feature a frame
gets (its kind), and the plans that say which other frames each frame's detection needs.

A video meta-architecture picks a :class:`SupportPolicy`; at every new video the core asks it
for a :class:`SupportPlan` for that video, which answers, for each frame, the indices of the
frames whose cached payloads its detection reads. Three policies cover the three shapes of
video detector:

* :class:`WindowSupport`: a fixed window of frame offsets (STSN, STMN), clamped into the video,
  so border frames repeat the first or last frame;
* :class:`NoSupport`: the frame alone, plus whatever recurrent state the method keeps (the
  single-frame baseline, and online key-frame methods such as LSTS);
* :class:`GlobalSupport`: a fixed set of frames spread uniformly over the *whole* video,
  SELSA-style (SparseVOD), computed before the video is streamed; or, when the video's length
  is unknown (a live stream), a uniform sample of the past frames;
* :class:`KeySegmentSupport`: the key frame of the frame's segment (key-frame methods whose
  non-key frames read their key frame's payload: Impression Network, DFF, LSTS), which may lie
  ahead of the frame when the key frame is the segment's centre.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "FULL",
    "LIGHT",
    "NONE",
    "FRAME_KINDS",
    "FrameInfo",
    "SupportPlan",
    "SupportPolicy",
    "WindowSupport",
    "NoSupport",
    "GlobalSupport",
    "KeySegmentSupport",
    "KEY_POSITIONS",
    "key_frame_index",
    "spread_indices",
]

#: The frame goes through the heavy feature network (every frame of window methods; key frames).
FULL = "full"
#: The frame goes through a light path only (e.g. LSTS's low-level layers on non-key frames).
LIGHT = "light"
#: The frame gets no backbone at all (e.g. Impression Network's non-key frames: a flow net only).
NONE = "none"
FRAME_KINDS = (FULL, LIGHT, NONE)


@dataclass(frozen=True)
class FrameInfo:
    """
    What a method is told about a frame.

    Attributes:
        index: the frame's index in its video, in arrival order (0-based).
        video_length: number of frames of the video, or None where it is not known.
        kind: the feature the method's policy gives the frame: :data:`FULL`, :data:`LIGHT`
            or :data:`NONE`.
        file_name: where the frame comes from, when it was read from a dataset's files ("" if
            not: a video file, a camera): the frame's own file at test time, in training the
            file of its sample's annotated frame. The methods ignore it; a diagnostic that knows
            the data reads it (the synthetic oracle flow).
        file_index: the index of the frame stored in ``file_name``: the frame is ``index -
            file_index`` frames after it in the video.
    """

    index: int
    video_length: Optional[int] = None
    kind: str = FULL
    file_name: str = ""
    file_index: int = 0

    def __post_init__(self):
        if self.kind not in FRAME_KINDS:
            raise ValueError(f"frame kind must be one of {FRAME_KINDS}, got {self.kind!r}")

    @property
    def is_key(self) -> bool:
        """Whether the frame gets the heavy feature network."""
        return self.kind == FULL


class SupportPlan:
    """
    The support frames of every frame of one video. The core calls :meth:`observe` as each
    frame arrives, :meth:`support` to know what a frame's detection reads, and :meth:`keep` to
    evict cached payloads that no later detection reads.
    """

    #: Frames looked at before the current one when a support frame is in the past (bounds the
    #: cache); None when no bound is known in advance.
    look_back: Optional[int] = 0

    def prefetch(self) -> List[int]:
        """Frames whose payloads must be computed before the video is streamed."""
        return []

    def observe(self, frame: FrameInfo) -> None:
        """``frame`` has arrived (frames arrive in order)."""

    def support(self, index: int, video_length: Optional[int]) -> List[int]:
        """
        Args:
            index: a frame that has arrived.
            video_length: the video's length, or None while it is unknown; the core passes the
                number of frames seen once the video has ended.

        Returns:
            list[int]: indices of the frames frame ``index``'s detection reads; an index not yet
            arrived makes the frame wait.
        """
        raise NotImplementedError

    def keep(self, index: int, next_target: int) -> bool:
        """Whether frame ``index``'s payload may still be read by frame ``next_target`` or later."""
        return self.look_back is None or index >= next_target - self.look_back


class SupportPolicy:
    """Makes the :class:`SupportPlan` of each video."""

    def plan(self, video_length: Optional[int]) -> SupportPlan:
        raise NotImplementedError

    @property
    def frame_independent(self) -> bool:
        """Whether a frame's detection reads no other frame (True for :class:`NoSupport`)."""
        return False


class _WindowPlan(SupportPlan):
    def __init__(self, offsets: Sequence[int]):
        self.offsets = list(offsets)
        self.look_back = -min([0, *self.offsets])

    def support(self, index, video_length):
        last = float("inf") if video_length is None else video_length - 1
        return [int(min(max(index + o, 0), last)) for o in self.offsets]


class WindowSupport(SupportPolicy):
    """
    Frame ``t`` reads frames ``t + o`` for each offset ``o``, clamped into the video (so the
    video is padded by repeating its first and last frame). A frame waits for its largest
    offset, or for the video's end; at most ``max(offsets) - min(offsets) + 1`` payloads are
    cached.
    """

    def __init__(self, offsets: Sequence[int]):
        """
        Args:
            offsets: support-frame offsets relative to the frame, 0 excluded, in the order the
                method wants them.
        """
        if 0 in offsets:
            raise ValueError(f"window offsets exclude the frame itself (0), got {tuple(offsets)}")
        self.offsets = tuple(int(o) for o in offsets)

    def plan(self, video_length):
        return _WindowPlan(self.offsets)

    @property
    def frame_independent(self) -> bool:
        return not self.offsets


class NoSupport(WindowSupport):
    """Each frame is detected from its own payload (and the method's recurrent state) alone."""

    def __init__(self):
        super().__init__(())


def spread_indices(num: int, video_length: int, rng: np.random.Generator) -> List[int]:
    """
    ``num`` frame indices spread uniformly over ``[0, video_length)``: one drawn uniformly in
    each of ``num`` equal parts of the video (all frames when the video has at most ``num``).

    Returns:
        list[int]: sorted, distinct indices.
    """
    if video_length <= num:
        return list(range(video_length))
    bounds = np.linspace(0, video_length, num + 1)
    starts = np.ceil(bounds[:-1]).astype(int)
    ends = np.maximum(np.ceil(bounds[1:]).astype(int), starts + 1)
    return [int(rng.integers(s, e)) for s, e in zip(starts, ends)]


class _WholeVideoPlan(SupportPlan):
    look_back = None

    def __init__(self, indices: List[int]):
        self.indices = indices

    def prefetch(self):
        return list(self.indices)

    def support(self, index, video_length):
        if video_length is None:
            return list(self.indices)
        return [i for i in self.indices if i < video_length]

    def keep(self, index, next_target):
        return index in self.indices


class _PastFramesPlan(SupportPlan):
    """
    A uniform sample of up to ``num`` frames before each frame, kept by reservoir sampling.
    Every support frame is in the past, so each frame is detected as soon as it arrives,
    before the next one is observed.
    """

    look_back = None

    def __init__(self, num: int, rng: np.random.Generator):
        self.num = num
        self.rng = rng
        self.reservoir: List[int] = []
        self.latest: Tuple[int, List[int]] = (-1, [])

    def observe(self, frame):
        index = frame.index
        self.latest = (index, sorted(self.reservoir))
        if len(self.reservoir) < self.num:
            self.reservoir.append(index)
        else:
            slot = int(self.rng.integers(0, index + 1))
            if slot < self.num:
                self.reservoir[slot] = index

    def support(self, index, video_length):
        latest, sample = self.latest
        if index != latest:
            raise RuntimeError(f"frame {index} is read after frame {latest} arrived")
        return list(sample)

    def keep(self, index, next_target):
        return index in self.reservoir or index in self.latest[1]


class GlobalSupport(SupportPolicy):
    """
    SELSA-style support: every frame of a video reads the same ``num`` frames, spread uniformly
    over the whole video (:func:`spread_indices`), whose payloads are computed before the video
    is streamed (the caller primes them: :meth:`VideoDetector.prefetch_indices`). Frames are
    detected as they arrive; memory holds the ``num`` support payloads.

    When the length is unknown (a live stream), the online variant reads a uniform sample of up
    to ``num`` *past* frames (reservoir sampling), so the first frame has no support.

    The draw is deterministic: it depends on ``seed`` and the video's length only.
    """

    def __init__(self, num: int, seed: int = 0):
        """
        Args:
            num: number of support frames.
            seed: seed of the draw.
        """
        if num < 1:
            raise ValueError(f"whole-video support needs at least one frame, got {num}")
        self.num = num
        self.seed = seed

    def plan(self, video_length):
        if video_length is None:
            return _PastFramesPlan(self.num, np.random.default_rng([self.seed, 1]))
        rng = np.random.default_rng([self.seed, 0, video_length])
        return _WholeVideoPlan(spread_indices(self.num, video_length, rng))


#: Where a segment's key frame lies: its first frame (online) or its centre.
KEY_POSITIONS = ("first", "center")


def key_frame_index(
    index: int, video_length: Optional[int], interval: int, position: str = "first"
) -> int:
    """
    The key frame of frame ``index``'s segment. A video is cut into segments of ``interval``
    frames; the key frame of a segment is its first frame, or its central one (frame
    ``(n - 1) // 2`` of its n frames; the last segment of a video of known length may be
    shorter, an unknown length counts it whole).

    Args:
        index: a frame index.
        video_length: the video's length, or None where unknown.
        interval: frames per segment (the key-frame interval l).
        position: "first" or "center" (:data:`KEY_POSITIONS`).
    """
    start = index - index % interval
    if position == "first":
        return start
    size = interval if video_length is None else min(interval, video_length - start)
    return start + (size - 1) // 2


class _KeySegmentPlan(SupportPlan):
    def __init__(self, interval: int, position: str):
        self.interval = interval
        self.position = position
        # Non-key frames keep nothing once detected (support keys are a key frame's), so a
        # look-back over two segments costs two key payloads.
        self.look_back = 2 * interval
        self.keys: List[int] = []
        self.num_seen = 0

    def observe(self, frame):
        self.num_seen = frame.index + 1
        if frame.is_key:
            self.keys.append(frame.index)

    def support(self, index, video_length):
        if index in self.keys:
            return []
        key = key_frame_index(index, video_length, self.interval, self.position)
        coming = key >= self.num_seen and (video_length is None or key < video_length)
        if key in self.keys or coming:
            return [key]
        # The video ended before the segment's key frame came (a stream of unknown length):
        # the segment reads the latest key frame before it.
        earlier = [k for k in self.keys if k < index]
        if not earlier:
            raise ValueError(
                f"the video ended after {video_length} frames, before its first key frame "
                f"({key}): give the video's length, or put key frames first"
            )
        return [earlier[-1]]


class KeySegmentSupport(SupportPolicy):
    """
    Every non-key frame reads its segment's key frame (:func:`key_frame_index`); key frames
    read nothing. With central key frames a frame waits for its key frame, at most
    ``interval // 2`` frames ahead.
    """

    def __init__(self, interval: int, position: str = "first"):
        """
        Args:
            interval: the key-frame interval l (frames per segment), >= 1.
            position: "first" (online) or "center".
        """
        if interval < 1:
            raise ValueError(f"MODEL.VIDEO.KEY_FRAME_INTERVAL must be >= 1, got {interval}")
        if position not in KEY_POSITIONS:
            raise ValueError(
                f"MODEL.KEY_FRAME.POSITION must be one of {KEY_POSITIONS}, got {position!r}"
            )
        self.interval = interval
        self.position = position

    def plan(self, video_length):
        return _KeySegmentPlan(self.interval, self.position)
