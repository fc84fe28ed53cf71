"""
STMN at test time, frame by frame: the memories of every frame's window, computed in the order
the frames arrive while holding only what later windows still need.

Each test frame t is detected with the memories of its own window (the authors' "centre" test
mode): the forward memory runs over the past frames ``t - s j`` (j = before..1, clamped at the
first frame) and ends on t, the backward memory over the future frames ``t + s j``
(j = after..1, clamped at the last frame) and ends on t, each from a zero memory. Computing them
window by window from cached frame encodings holds, per frame of the 2 s K + 1 frames a window
spans, the features MatchTrans reads and both directions' input projections: with the paper's
(5, 5) window at stride 10 and 600 x 1000 frames, 101 frames x (2048 + 2 x 1536) channels at
38 x 63, about 5 GB in float32.

:class:`STMNTestStream` gives the same memories from much less:

* **Forward memories eagerly.** When frame u arrives, every window whose forward sequence
  contains u takes its step at u (window t = u + s j, j = 0..before), and the window of u itself
  is finished: it is returned, for the meta-architecture to hold until u's detection. Windows in
  progress hold one memory each (s * before of them); u's forward projection is used at once and
  dropped.
* **Backward memories at detection.** Frame t's backward memory starts at its last future frame,
  which is the last to arrive, so it is run when t is detected, from the backward projections of
  the frames it visits; each frame's is kept until the last window that visits it is detected.
* **MatchTrans coefficients once per frame pair.** The coefficients aligning frame a's memory to
  frame b depend on the two frames' features only, not on the window (every window that visits
  a and b one after the other uses the same ones): each pair's are computed once, from the
  features of the last s frames (the only ones kept). Those of the backward direction are kept
  (25 channels) until no window needs them.

Steps, alignments and BN* statistics are those of :meth:`STMNAggregation.forward` on each
window, computed on the same tensors, so the memories are the same to the last bit (a step shared
by several windows, such as the first frame's for every window clamped at the video's start, is
computed once). With the paper's configuration the stream holds at most about
51 x 1536 + 101 x 512 + 10 x 2048 channels (backward projections, window memories, features),
about 1.45 GB at 600 x 1000 in float32. That is the floor of any exact schedule: a backward
memory cannot start before its window's last frame arrives, so the projections of the 51 frames
a window spans must wait for it (or the larger features, or the frames' backbone passes again),
and a forward memory must wait 50 frames for its backward one.

**Half-precision cache** (``cache_dtype=torch.float16``, ``MODEL.STMN.TEST_CACHE_DTYPE``). The
two largest waiting groups, the backward projections and the finished forward memories, are
stored in float16 and used in the compute dtype: each is rounded once (to 11 significant bits)
and read by steps computed in float32, so no rounding accumulates along a window. The
paper's configuration then holds about 0.95 GB at 600 x 1000. A tensor with a value beyond
float16's range is kept in its own dtype, so the cache never turns a value into inf.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...layers import local_aggregate
from .stmm import SpatialTemporalMemory

__all__ = ["STMNTestStream"]


class STMNTestStream:
    """
    The test-time state of :class:`~vod_d2.modeling.temporal.stmn.STMNAggregation` for one
    video (see the module docstring). Frames are pushed in order from index 0
    (:meth:`push`), and frames are detected in order (:meth:`memories`), each once the frames of
    its window have been pushed.
    """

    def __init__(
        self,
        forward_memory: SpatialTemporalMemory,
        backward_memory: Optional[SpatialTemporalMemory],
        before: int,
        stride: int,
        cache_dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            forward_memory: the forward direction (its cell and aligner).
            backward_memory: the backward direction, or None for a forward-only model.
            before: frames of the window before the reference (``MODEL.VIDEO.TEST_WINDOW[0]``).
            stride: frame step between window members (``MODEL.VIDEO.TEST_STRIDE``).
            cache_dtype: dtype of the backward projections and finished forward memories while
                they wait (see the module docstring); None keeps the features' dtype.
        """
        self.forward_memory = forward_memory
        self.backward_memory = backward_memory
        self.before = before
        self.stride = stride
        self.cache_dtype = cache_dtype
        # The features' dtype: that of every step and of the memories returned.
        self._dtype: Optional[torch.dtype] = None
        self.aligner = forward_memory.aligner
        self.num_pushed = 0
        self.last_detected = -1
        # Features of the last ``stride`` frames, for MatchTrans pairs not yet computed.
        self.features: Dict[int, torch.Tensor] = {}
        # Window in progress -> (its last frame so far, its memory after that frame).
        self.chains: Dict[int, Tuple[int, torch.Tensor]] = {}
        self.backward_projections: Dict[int, torch.Tensor] = {}
        # (a, b), a < b -> coefficients aligning frame b's backward memory to frame a.
        self.backward_coefficients: Dict[Tuple[int, int], torch.Tensor] = {}

    def forward_sequence(self, t: int) -> List[int]:
        """The frames window t's forward memory visits, oldest first, ending on t."""
        past = {max(t - self.stride * j, 0) for j in range(1, self.before + 1)}
        return sorted(past | {t})

    @torch.no_grad()
    def push(self, index: int, feature: torch.Tensor) -> torch.Tensor:
        """
        Take the next frame: advance every window whose forward memory visits it.

        Args:
            index: the frame's index in the video (the number of frames pushed so far).
            feature (Tensor): (1, C_in, H, W) its backbone map.

        Returns:
            Tensor: (1, M, H, W) the forward memory of the frame's own window, in the cache
            dtype (:meth:`memories` takes it back).
        """
        if index != self.num_pushed:
            raise RuntimeError(
                f"STMN streams the frames of a video in order: got frame {index} after "
                f"{self.num_pushed} frames (reset the model at every new video)"
            )
        if feature.dim() != 4 or feature.shape[0] != 1:
            raise ValueError(f"STMN streams one frame at a time, got {tuple(feature.shape)}")
        self.num_pushed += 1
        self._dtype = feature.dtype
        if self.aligner is not None:
            self.features[index] = feature
        projected = self.forward_memory.cell.project(feature)
        if self.backward_memory is not None:
            self.backward_projections[index] = self._store(
                self.backward_memory.cell.project(feature)
            )
            if self.aligner is not None and index >= self.stride:
                pair = (index - self.stride, index)
                self.backward_coefficients[pair] = self._coefficients(*pair)

        if index == 0:
            windows: Sequence[int] = range(self.stride * self.before + 1)
        else:
            windows = [index + self.stride * j for j in range(self.before + 1)]
        steps: Dict[tuple, torch.Tensor] = {}
        coefficients: Dict[int, torch.Tensor] = {}
        finished = None
        for t in windows:
            sequence = self.forward_sequence(t)
            position = sequence.index(index)
            if position == 0:
                previous, memory, key = None, None, (None,)
            else:
                previous, memory = self.chains[t]
                if previous != sequence[position - 1]:
                    raise RuntimeError(f"window {t} missed frame {sequence[position - 1]}")
                key = (previous, id(memory))
            if key not in steps:
                # Windows that reach this step from the same memory share it (e.g. all those
                # clamped at the first frame): the same inputs give the same step.
                if previous is not None and self.aligner is not None:
                    if previous not in coefficients:
                        coefficients[previous] = self._coefficients(index, previous)
                    memory = self._align(coefficients[previous], memory)
                steps[key] = self.forward_memory.cell(projected, memory)
            if t == index:
                finished = steps[key]
            else:
                self.chains[t] = (index, steps[key])
        self.chains.pop(index, None)
        for old in [i for i in self.features if i <= index - self.stride]:
            del self.features[old]
        return self._store(finished)

    @torch.no_grad()
    def memories(self, index: int, forward: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
        """
        The memories frame ``index`` is detected with.

        Args:
            index: the frame.
            forward (Tensor): (1, M, H, W) its forward memory (:meth:`push`'s result for it).
            window: the frames of its window (support frames, clamped into the video), in any
                order, repeats allowed.

        Returns:
            Tensor: (1, M, H, W) the forward memory, or (1, 2 M, H, W) the forward and backward
            memories concatenated.
        """
        if index <= self.last_detected or index >= self.num_pushed:
            raise RuntimeError(
                f"STMN detects pushed frames in order: frame {index} after frame "
                f"{self.last_detected}, with {self.num_pushed} frames pushed"
            )
        past = sorted({i for i in window if i < index} | {index})
        if past != self.forward_sequence(index):
            raise ValueError(
                f"frame {index} is detected with the past frames {past[:-1]}, but STMN's test "
                f"memory was built for {self.forward_sequence(index)[:-1]} "
                f"(MODEL.VIDEO.TEST_WINDOW and TEST_STRIDE of the model's config)"
            )
        outputs = [forward.to(self._dtype)]
        if self.backward_memory is not None:
            future = sorted({i for i in window if i > index}, reverse=True)
            memory, later = None, None
            for frame in future + [index]:
                if later is not None and self.aligner is not None:
                    memory = self._align(self._backward_coefficients(frame, later), memory)
                projection = self.backward_projections[frame].to(self._dtype)
                memory = self.backward_memory.cell(projection, memory)
                later = frame
            outputs.append(memory)
        self._release(index)
        return torch.cat(outputs, dim=1)

    def held_tensors(self) -> List[torch.Tensor]:
        """Every tensor the stream holds (each once), e.g. to count its memory."""
        held = list(self.features.values()) + [m for _, m in self.chains.values()]
        held += list(self.backward_projections.values()) + list(self.backward_coefficients.values())
        unique = {id(t): t for t in held}
        return list(unique.values())

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` in the cache dtype, or as it is if a value would not be finite there."""
        if self.cache_dtype is None or tensor.dtype == self.cache_dtype:
            return tensor
        stored = tensor.to(self.cache_dtype)
        return stored if torch.isfinite(stored).all() else tensor

    def _release(self, detected: int):
        """Frame ``detected`` is done: no later window visits a frame up to it backwards."""
        self.last_detected = detected
        for frame in [i for i in self.backward_projections if i <= detected]:
            del self.backward_projections[frame]
        for pair in [p for p in self.backward_coefficients if p[0] <= detected]:
            del self.backward_coefficients[pair]

    def _backward_coefficients(self, frame: int, later: int) -> torch.Tensor:
        pair = (frame, later)
        if pair not in self.backward_coefficients:
            # Pairs closer than the stride: the window clamped at the video's last frame.
            self.backward_coefficients[pair] = self._coefficients(frame, later)
        return self.backward_coefficients[pair]

    def _coefficients(self, target: int, source: int) -> torch.Tensor:
        """MatchTrans coefficients aligning frame ``source``'s memory to frame ``target``."""
        missing = {target, source} - set(self.features)
        if missing:
            raise RuntimeError(
                f"STMN's test memory keeps the features of the last {self.stride} frames, but "
                f"aligning frame {source} to frame {target} needs frames {sorted(missing)}"
            )
        return self.aligner.transform_coefficients(self.features[target], self.features[source])

    def _align(self, coefficients: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # As MatchTransAlign.forward (and PositiveCosineMatchTrans.forward) with the pair's
        # coefficients computed once.
        return local_aggregate(coefficients.to(memory.dtype), memory, self.aligner.k)
