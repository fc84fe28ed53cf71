"""
Diagnostic flow networks: bounds on what flow-guided propagation (DFF, Impression Network) can
do, not methods. Select one with ``MODEL.FLOW.NAME``:

* ``ZeroFlow``: no motion at all. A non-key frame reads its key frame's feature unmoved (and the
  impression is carried unwarped): what propagation gives without any motion compensation.
* ``SyntheticOracleFlow``: the synthetic generator's exact flow between the two frames
  (:func:`vod_d2.data.synthetic.dataset_video_flow`, the code that renders the flow
  pretraining's ground truth), averaged over each feature cell. What no flow network can beat:
  the rest of the loss is the propagation's own (bilinear warping of stride-16 features, the
  flow averaged over a cell where objects and background move apart, occlusions that no warp
  undoes). For the built-in synthetic datasets only.

With either, DFF's and Impression's scale map S is 1 (there is no network top for it to read)
and there are no weights: nothing to load (``MODEL.FLOW.WEIGHTS``) or to train.
"""

from typing import Optional, Sequence, Tuple

import torch
from detectron2.config import configurable

from ...data.mapper import read_frame
from .base import FlowNetwork, feature_flow
from .build import FLOW_NET_REGISTRY

__all__ = ["ZeroFlow", "SyntheticOracleFlow"]

# Largest mean difference (grey levels) between a frame the model was given and the frame read
# from its file again: the same decoded JPEG, up to the normalisation's rounding.
_SAME_FRAME_TOLERANCE = 1.0


class _FixedFlow(FlowNetwork):
    """A flow network without weights, whose scale map S is 1."""

    @configurable
    def __init__(self, *, feature_channels: int, input_format: str = "BGR"):
        """
        Args:
            feature_channels: channels C of the warped feature (of S, all ones).
            input_format: channel order of the given frames (``INPUT.FORMAT``).
        """
        super().__init__(feature_channels, input_format)

    @classmethod
    def from_config(cls, cfg, feature_channels: int):
        return {"feature_channels": feature_channels, "input_format": cfg.INPUT.FORMAT}

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_ones(len(images), self.feature_channels, *self.feature_size(images))

    def load_pretrained(self, path: str) -> None:
        raise ValueError(
            f"MODEL.FLOW.NAME {type(self).__name__} has no weights: MODEL.FLOW.WEIGHTS must be "
            f"empty, got {path}"
        )


@FLOW_NET_REGISTRY.register()
class ZeroFlow(_FixedFlow):
    """Zero flow and S = 1: propagation copies the key frame's feature (module docstring)."""

    def forward(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            cur_images, ref_images (Tensor): (N, 3, H, W) frames (see FlowNetwork).

        Returns:
            (flow (N, 2, ceil(H/16), ceil(W/16)) zeros, scale (N, C, ceil(H/16), ceil(W/16))
            ones).
        """
        if cur_images.shape != ref_images.shape:
            raise ValueError(
                f"ZeroFlow: frames of different shapes {tuple(cur_images.shape)} and "
                f"{tuple(ref_images.shape)}"
            )
        scale = self._scale(cur_images)
        return scale.new_zeros(len(scale), 2, *scale.shape[-2:]), scale


@FLOW_NET_REGISTRY.register()
class SyntheticOracleFlow(_FixedFlow):
    """
    The synthetic generator's exact flow (a diagnostic; module docstring), S = 1.

    It must know which frames it is given: it :attr:`reads_frames`. The key-frame module
    (:class:`~vod_d2.modeling.temporal.impression.ImpressionKeyFrames`) turns the frames'
    metadata into keys (:meth:`frame_keys`: the file each frame was read from, which
    :class:`~vod_d2.modeling.KeyFrameRCNN` tells it) and hands them to ``forward`` with the
    images. The images themselves are checked against their files, which also tells whether
    the training augmentation flipped them (both frames of a pair alike); frames resized away
    from the generated size, frames without a file (a video file, a camera) and files that are
    not the synthetic generator's are refused with one line.
    """

    reads_frames = True

    @configurable
    def __init__(self, *, feature_channels: int, input_format: str = "BGR"):
        """
        Args:
            feature_channels: channels C of the warped feature (of S, all ones).
            input_format: channel order of the given frames (``INPUT.FORMAT``).
        """
        super().__init__(feature_channels=feature_channels, input_format=input_format)
        # The code the keys give each (root, video) seen; grows with the videos.
        self._videos = {}

    def frame_keys(self, frames: Sequence) -> torch.Tensor:
        """
        Args:
            frames (list[FrameInfo]): the frames' metadata, with the file they come from
                (:class:`~vod_d2.modeling.frames.FrameInfo`'s ``file_name``).

        Returns:
            Tensor: (N, 2) int64 keys, (video code, frame index) of each frame.
        """
        # Imported when used: `python -m vod_d2.data.synthetic` must not find it imported.
        from ...data import synthetic

        keys = []
        for frame in frames:
            file_name = frame.file_name
            if not file_name:
                raise ValueError(
                    f"SyntheticOracleFlow (MODEL.FLOW.NAME, a diagnostic for the synthetic "
                    f"datasets) needs to know the file of every frame; frame {frame.index} has "
                    "none (a video file or a camera?)"
                )
            root, video, t = synthetic.locate_dataset_frame(file_name)
            code = self._videos.setdefault((root, video), len(self._videos))
            keys.append((code, t + frame.index - frame.file_index))
        return torch.tensor(keys, dtype=torch.long).view(-1, 2)

    def forward(
        self,
        cur_images: torch.Tensor,
        ref_images: torch.Tensor,
        cur_frames: Optional[torch.Tensor] = None,
        ref_frames: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            cur_images, ref_images (Tensor): (N, 3, H, W) frames (see FlowNetwork).
            cur_frames, ref_frames (Tensor): (N, 2) their keys (:meth:`frame_keys`).

        Returns:
            (flow (N, 2, ceil(H/16), ceil(W/16)): the exact flow averaged over each 16 x 16
            cell, in feature pixels; scale (N, C, ceil(H/16), ceil(W/16)) ones).
        """
        if cur_frames is None or ref_frames is None:
            raise ValueError(
                "SyntheticOracleFlow must be told which synthetic frames it sees: it runs inside "
                "a key-frame method (DFF, Impression Network) on a synthetic dataset"
            )
        if cur_images.shape != ref_images.shape:
            raise ValueError(
                f"SyntheticOracleFlow: frames of different shapes {tuple(cur_images.shape)} and "
                f"{tuple(ref_images.shape)}"
            )
        from ...data import synthetic

        names = {code: name for name, code in self._videos.items()}
        flow = cur_images.new_zeros(len(cur_images), 2, *cur_images.shape[-2:])
        pairs = zip(cur_frames.tolist(), ref_frames.tolist())
        for i, ((cur_code, cur_t), (ref_code, ref_t)) in enumerate(pairs):
            root, video = names[cur_code]
            if ref_code != cur_code:
                raise ValueError(
                    f"SyntheticOracleFlow: flow asked between two videos, {video} and "
                    f"{names[ref_code][1]}"
                )
            pixels = torch.from_numpy(synthetic.dataset_video_flow(root, video, cur_t, ref_t))
            flipped = self._flipped(cur_images[i], root, video, cur_t)
            if self._flipped(ref_images[i], root, video, ref_t) != flipped:
                raise ValueError(
                    f"SyntheticOracleFlow: frames {cur_t} and {ref_t} of {video} are flipped "
                    "differently"
                )
            if flipped:  # x -> W - 1 - x: the field mirrored, its x component negated
                pixels = pixels.flip(-1) * torch.tensor([-1.0, 1.0]).view(2, 1, 1)
            height, width = pixels.shape[-2:]
            flow[i, :, :height, :width] = pixels.to(flow)
        return feature_flow(flow), self._scale(cur_images)

    def _flipped(self, image: torch.Tensor, root: str, video: str, t: int) -> bool:
        """Whether ``image`` (3, H, W) is frame ``t``'s file mirrored (else it is the file)."""
        from ...data import synthetic

        file_name = synthetic.dataset_frame_file(root, video, t)
        stored = torch.from_numpy(read_frame(file_name, self.input_format).copy())
        stored = stored.permute(2, 0, 1).float()
        height, width = stored.shape[-2:]
        seen = image[:, :height, :width].detach().float().cpu()
        if seen.shape != stored.shape:
            raise ValueError(
                f"SyntheticOracleFlow needs the frames at their generated size, {height}x{width} "
                f"({file_name}), got {image.shape[-2]}x{image.shape[-1]}: set INPUT.MIN_SIZE_TRAIN "
                f"and MIN_SIZE_TEST to {min(height, width)}"
            )
        plain, mirrored = ((seen - x).abs().mean().item() for x in (stored, stored.flip(-1)))
        if min(plain, mirrored) > _SAME_FRAME_TOLERANCE:
            raise ValueError(
                f"SyntheticOracleFlow: the frame given as {file_name} differs from that file by "
                f"{min(plain, mirrored):.1f} grey levels on average (resized, or augmented "
                "other than by a flip?)"
            )
        return mirrored < plain
