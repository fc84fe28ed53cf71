"""Per-video cache of backbone features for test-time windows."""

from typing import Dict, Iterator, List, Tuple

import torch

__all__ = ["FeatureWindow"]


class FeatureWindow:
    """
    Holds the backbone features of the frames of one video that a pending or future window
    still needs, so that every frame goes through the backbone exactly once (its
    ``in_feature`` map as the aggregation module's ``encode`` left it, if it has one).

    Frame ``t``'s window is ``t + o`` for each offset ``o`` in ``offsets``, clamped into the
    frames seen so far, which pads the video by repeating its first and last frame. A frame is
    ready once the largest offset is in the past or the video has ended. At most
    ``max(offsets) - min(offsets) + 1`` frames are cached (fewer for one-sided windows).
    """

    def __init__(self, offsets: List[int], in_feature: str):
        """
        Args:
            offsets: support-frame offsets relative to the reference frame (0 excluded).
            in_feature: name of the backbone map the support frames contribute.
        """
        self.offsets = list(offsets)
        self.in_feature = in_feature
        self._look_ahead = max([0, *self.offsets])
        self._look_back = -min([0, *self.offsets])
        self._features: Dict[int, Dict[str, torch.Tensor]] = {}
        self._pending: Dict[int, Tuple[dict, tuple]] = {}
        self._num_seen = 0
        self._next = 0

    def __len__(self):
        """Number of cached frames."""
        return len(self._features)

    def push(self, meta: dict, features: Dict[str, torch.Tensor], image_size: tuple):
        """
        Add the next frame.

        Args:
            meta: the frame's metadata, returned with its window.
            features: backbone maps of the frame, each (1, C, H, W).
            image_size: (h, w) of the frame as fed to the backbone.
        """
        self._features[self._num_seen] = features
        self._pending[self._num_seen] = (meta, image_size)
        self._num_seen += 1

    def pop_ready(self, final: bool = False) -> Iterator[tuple]:
        """
        Yield the frames whose window is complete (all pending ones if ``final``), in order.

        Yields:
            tuple: ``(meta, features, image_size, support, offsets)``: the frame's metadata,
            its backbone maps, its (h, w), the (1, S, C, H, W) stack of the window's
            ``in_feature`` maps and the S clamped frame offsets. Frames no window needs any
            more are dropped as the iteration advances.
        """
        last = self._num_seen - 1
        while self._next <= last and (final or self._next + self._look_ahead <= last):
            t = self._next
            meta, image_size = self._pending.pop(t)
            indices = [min(max(t + o, 0), last) for o in self.offsets]
            ref = self._features[t][self.in_feature]
            if indices:
                support = torch.stack([self._features[i][self.in_feature][0] for i in indices])
            else:
                support = ref.new_empty((0, *ref.shape[1:]))
            yield meta, self._features[t], image_size, support[None], [i - t for i in indices]
            self._next += 1
            for old in [i for i in self._features if i < self._next - self._look_back]:
                del self._features[old]
