"""Rules that choose the support frames of a training sample around its reference frame."""

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

__all__ = ["FrameSampler", "SAMPLING_RULES"]

SAMPLING_RULES = ("none", "before_after", "uniform_range", "fixed", "global", "key_frame")


@dataclass(frozen=True)
class FrameSampler:
    """
    Draws support-frame offsets for a reference frame. Offsets are clamped into the video, so
    a support frame beyond a border repeats the first or last frame, and every support frame
    of a one-frame video (a DET image) is the image itself.

    Rules (``rule``):

    * ``"none"``: no support frame (single-frame training).
    * ``"before_after"``: ``num_support // 2`` frames drawn uniformly in ``[t - range, t - 1]``,
      the others in ``[t + 1, t + range]`` (STSN: one before and one after).
    * ``"uniform_range"``: ``num_support`` frames drawn uniformly in ``[t - range, t + range]``.
    * ``"fixed"``: the frames ``t + o`` for each ``o`` in ``offsets`` (STMN's sequence).
    * ``"global"``: ``num_support`` frames drawn uniformly over the whole video, without
      replacement when it is long enough (SparseVOD).
    * ``"key_frame"``: an old and a new key frame, ``t + d_0`` and ``t + d_1`` with ``d_0``
      uniform in ``[key_ranges[0], key_ranges[1]]`` and ``d_1`` in ``[key_ranges[2],
      key_ranges[3]]`` (inclusive): the old key / current / new key triplets of key-frame
      methods (Impression §3.2: ``d_0`` in [-l, -l/2], ``d_1`` in [-l/2, l/2]; the LSTS
      authors' sampler: [-10, -6] and [-5, 4]).
    """

    rule: str
    num_support: int = 0
    range: int = 1
    offsets: Tuple[int, ...] = ()
    key_ranges: Tuple[int, int, int, int] = (-10, -5, -5, 5)

    def __post_init__(self):
        if self.rule not in SAMPLING_RULES:
            raise ValueError(
                f"INPUT.VIDEO.TRAIN_SAMPLING={self.rule!r} is not one of {SAMPLING_RULES}"
            )
        if self.rule in ("before_after", "uniform_range", "global") and self.num_support < 1:
            raise ValueError(f"rule {self.rule!r} needs INPUT.VIDEO.TRAIN_NUM_SUPPORT >= 1")
        if self.rule in ("before_after", "uniform_range") and self.range < 1:
            raise ValueError(f"rule {self.rule!r} needs INPUT.VIDEO.TRAIN_RANGE >= 1")
        if self.rule == "fixed" and (not self.offsets or 0 in self.offsets):
            raise ValueError("rule 'fixed' needs non-zero INPUT.VIDEO.TRAIN_OFFSETS")
        if self.rule == "key_frame":
            ranges = tuple(self.key_ranges)
            if len(ranges) != 4 or ranges[0] > ranges[1] or ranges[2] > ranges[3]:
                raise ValueError(
                    "rule 'key_frame' needs INPUT.VIDEO.TRAIN_KEY_RANGES = (old_min, old_max, "
                    f"new_min, new_max) with min <= max, got {ranges}"
                )

    @classmethod
    def from_config(cls, cfg) -> "FrameSampler":
        return cls(
            rule=cfg.INPUT.VIDEO.TRAIN_SAMPLING,
            num_support=cfg.INPUT.VIDEO.TRAIN_NUM_SUPPORT,
            range=cfg.INPUT.VIDEO.TRAIN_RANGE,
            offsets=tuple(cfg.INPUT.VIDEO.TRAIN_OFFSETS),
            key_ranges=tuple(cfg.INPUT.VIDEO.TRAIN_KEY_RANGES),
        )

    @property
    def length(self) -> int:
        """Number of support frames every sample gets."""
        return {"none": 0, "fixed": len(self.offsets), "key_frame": 2}.get(
            self.rule, self.num_support
        )

    def __call__(self, frame_idx: int, video_length: int, rng: np.random.Generator) -> List[int]:
        """
        Args:
            frame_idx: index of the reference frame in its video.
            video_length: number of frames of the video.
            rng: source of randomness (seeded by the data loader).

        Returns:
            list[int]: ``self.length`` offsets ``support_idx - frame_idx``, in the rule's order.
        """
        t, n = frame_idx, self.num_support
        if self.rule == "none":
            frames = []
        elif self.rule == "before_after":
            frames = list(t - rng.integers(1, self.range + 1, size=n // 2))
            frames += list(t + rng.integers(1, self.range + 1, size=n - n // 2))
        elif self.rule == "uniform_range":
            frames = list(t + rng.integers(-self.range, self.range + 1, size=n))
        elif self.rule == "fixed":
            frames = [t + o for o in self.offsets]
        elif self.rule == "global":
            frames = list(rng.choice(video_length, size=n, replace=video_length < n))
        else:
            old_min, old_max, new_min, new_max = self.key_ranges
            frames = [t + int(rng.integers(old_min, old_max + 1))]
            frames.append(t + int(rng.integers(new_min, new_max + 1)))
        return [int(min(max(f, 0), video_length - 1)) - t for f in frames]
