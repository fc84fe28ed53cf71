"""
What every flow network of vod_d2 is: ``(I_cur, I_ref) -> (M, S)``, the flow at the feature stride
and the position-wise scale map of Impression Network §3.3 / Deep Feature Flow §3, plus the
flow-guided propagation ``W(f_ref, M) * S`` built on them.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .warp import warp

__all__ = ["FlowNetwork", "ScaleMap", "FEATURE_STRIDE", "feature_flow"]

# Stride of the flow and of the feature it warps, in pixels of the feature network's input:
# the paper's ResNet-101 with its dilated res5 (§3.3).
FEATURE_STRIDE = 16


def feature_flow(flow: torch.Tensor) -> torch.Tensor:
    """
    Pixel flow -> the flow at the feature stride, in feature cells: the mean over each 16 x 16
    cell (a partial cell at the border averages its pixels), divided by 16.

    Args:
        flow (Tensor): (N, 2, H, W) flow in pixels.

    Returns:
        Tensor: (N, 2, ceil(H / 16), ceil(W / 16)).
    """
    return F.avg_pool2d(flow, FEATURE_STRIDE, ceil_mode=True) / FEATURE_STRIDE


class ScaleMap(nn.Module):
    """
    ``S = 1 + W * x``: a 1x1 conv whose weights start at zero and whose bias is fixed at one
    (Impression §3.3: "initialized with weights of all zeros and fixed biases of all ones"; DFF
    gives that bias a learning rate of zero). So S is exactly 1 until training moves the weights,
    and the bias never moves.
    """

    def __init__(self, in_channels: int, out_channels: int):
        """
        Args:
            in_channels: channels of the flow network's top map it reads.
            out_channels: channels C of the feature it scales (one scale per channel).
        """
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        nn.init.zeros_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C_in, H, W).

        Returns:
            Tensor: (N, C, H, W) scales.
        """
        return 1.0 + self.conv(x)


class FlowNetwork(nn.Module):
    """
    Base of the flow networks (registered in ``FLOW_NET_REGISTRY``).

    A subclass implements ``load_pretrained(path)``, its inverse ``pretrained_state()`` and
    ``forward(cur_images, ref_images) -> (flow, scale)``:

    * ``cur_images``, ``ref_images`` (Tensor): (N, 3, H, W) frames exactly as the detector
      receives them: pixel values in [0, 255], channels in ``cfg.INPUT.FORMAT`` order, at the
      feature network's input size (padded like its input). Each network normalises them for
      its own weights, and runs at ``input_scale`` times that resolution
      (``MODEL.FLOW.INPUT_SCALE``; the papers' 0.5, §4.1: 600 px for the feature network,
      300 px for the flow network).
    * ``flow`` (Tensor): (N, 2, ceil(H / 16), ceil(W / 16)) flow ``F(I_cur, I_ref)`` at the
      feature stride, in pixels of the feature map: position p of the current frame matches
      ``p + flow(p)`` of the reference frame; channel 0 is x, channel 1 is y (the convention of
      :func:`~vod_d2.modeling.flow.warp.warp`).
    * ``scale`` (Tensor): (N, C, ceil(H / 16), ceil(W / 16)) the scale map S, C the channels of
      the feature it will scale (the ``feature_channels`` the network was built with).

    ``ceil(H / 16)`` is the size of a stride-16 ResNet map of an H-pixel input.

    A network with :attr:`reads_frames` (a diagnostic that knows the data, such as the synthetic
    oracle) also needs to know which frames it is given: its user turns the frames' metadata into
    keys with :meth:`frame_keys` and passes them to :meth:`propagate`, which passes them on to
    ``forward(cur_images, ref_images, cur_frames, ref_frames)``.
    """

    #: Whether ``forward`` also takes the frames' keys (:meth:`frame_keys`).
    reads_frames: bool = False

    def __init__(self, feature_channels: int, input_format: str, input_scale: float = 0.5):
        """
        Args:
            feature_channels: channels C of the warped feature, hence of S.
            input_format: channel order of the given frames, "BGR" or "RGB" (``INPUT.FORMAT``).
            input_scale: the network sees the frames resized by this factor
                (``MODEL.FLOW.INPUT_SCALE``).
        """
        super().__init__()
        if not input_scale > 0:
            raise ValueError(f"MODEL.FLOW.INPUT_SCALE must be positive, got {input_scale}")
        self.input_scale = float(input_scale)
        # The pretrained weights build_flow_net loaded (MODEL.FLOW.WEIGHTS), if any: the
        # optimizer then treats the network as pretrained, not as a new module.
        self.loaded_weights = ""
        if input_format not in ("BGR", "RGB"):
            raise ValueError(
                f"{type(self).__name__} reads BGR or RGB frames, got INPUT.FORMAT={input_format!r}"
            )
        self.feature_channels = feature_channels
        self.input_format = input_format

    def _to_network_input(
        self,
        images: torch.Tensor,
        network_format: str,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> torch.Tensor:
        """
        Args:
            images (Tensor): (N, 3, H, W) frames in ``self.input_format``, values in [0, 255].
            network_format: channel order the weights expect.
            mean, std: per-channel normalisation in that order, in [0, 255] units.

        Returns:
            Tensor: (N, 3, h, w) the normalised frames at ``input_scale`` times their size:
            ``ceil(H * s)`` when ``1 / s`` is an integer (each pixel the average of a
            ``1/s x 1/s`` block), else ``round(H * s)`` (bilinear, antialiased).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} takes (N, 3, H, W) frames, got {tuple(images.shape)}"
            )
        if network_format != self.input_format:
            images = images.flip(1)
        mean_t = images.new_tensor(mean).view(1, 3, 1, 1)
        std_t = images.new_tensor(std).view(1, 3, 1, 1)
        images = (images - mean_t) / std_t
        scale = self.input_scale
        if scale == 1.0:
            return images
        if (1.0 / scale).is_integer():
            # Half resolution as DFF makes it: 2x2 average pooling (its "full" pooling
            # convention, i.e. ceil_mode; the partial windows at the border average their
            # in-image pixels).
            return F.avg_pool2d(images, int(1.0 / scale), ceil_mode=True)
        size = [max(1, round(side * scale)) for side in images.shape[-2:]]
        return F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )

    @staticmethod
    def feature_size(images: torch.Tensor) -> Tuple[int, int]:
        """(ceil(H / 16), ceil(W / 16)) of (N, 3, H, W) frames: the flow's and S's size."""
        return -(-images.shape[-2] // FEATURE_STRIDE), -(-images.shape[-1] // FEATURE_STRIDE)

    @staticmethod
    def to_feature_grid(x: torch.Tensor, stride: float, size: Tuple[int, int]) -> torch.Tensor:
        """
        A map of the network, one cell per ``stride`` pixels of the frame, resampled to the
        feature stride: ``FEATURE_STRIDE / stride`` x the same cells averaged when that is an
        integer (ceil mode, as DFF pools), bilinearly resized otherwise; then cropped (or
        padded by replicating its border) to ``size``.

        Args:
            x (Tensor): (N, C, h, w) the map, its top-left cell on the frame's top-left.
            stride: frame pixels per cell of ``x``.
            size: (ceil(H / 16), ceil(W / 16)), the feature map's size.

        Returns:
            Tensor: (N, C, *size).
        """
        factor = FEATURE_STRIDE / stride
        if factor.is_integer():
            if factor > 1:
                x = F.avg_pool2d(x, int(factor), ceil_mode=True)
        else:
            resized = [math.ceil(side * factor) for side in x.shape[-2:]]
            x = F.interpolate(
                x, size=resized, mode="bilinear", align_corners=False, antialias=factor < 1
            )
        x = x[..., : size[0], : size[1]]
        pad_h, pad_w = size[0] - x.shape[-2], size[1] - x.shape[-1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return x

    def propagate(
        self,
        feature: torch.Tensor,
        cur_images: torch.Tensor,
        ref_images: torch.Tensor,
        cur_frames: Optional[torch.Tensor] = None,
        ref_frames: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        ``f_ref' = W(f_ref, F(I_cur, I_ref)) * S`` (Impression §3.3; DFF Eq. 2).

        Args:
            feature (Tensor): (N, C, h, w) feature of the reference frames, at stride 16.
            cur_images (Tensor): (N, 3, H, W) the frames to propagate to (see the class doc).
            ref_images (Tensor): (N, 3, H, W) the frames ``feature`` was computed on.
            cur_frames, ref_frames (Tensor or None): the two sets of frames' keys
                (:meth:`frame_keys`), for a network that :attr:`reads_frames` (else unused).

        Returns:
            Tensor: (N, C, h, w) the feature aligned to the current frames.
        """
        if feature.shape[1] != self.feature_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.feature_channels}-channel features "
                f"(its scale map S), got a feature of shape {tuple(feature.shape)}"
            )
        frames = (cur_frames, ref_frames) if self.reads_frames else ()
        flow, scale = self(cur_images, ref_images, *frames)
        return warp(feature, flow) * scale

    def frame_keys(self, frames: Sequence) -> torch.Tensor:
        """
        For a network that :attr:`reads_frames`: which frames these are, as a tensor that can
        travel with the frames' payloads.

        Args:
            frames (list[FrameInfo]): the frames' metadata.

        Returns:
            Tensor: (N, K) int64 keys, what ``forward`` takes as ``cur_frames``/``ref_frames``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not read which frames it sees")

    def freeze(self) -> "FlowNetwork":
        """
        Keep every weight (the scale map's too, so S stays 1) at its loaded value: Impression
        Table 1 (e), the off-the-shelf FlyingChairs FlowNet-S. Neither network here has
        normalisation statistics that training mode would update.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def forward(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def load_pretrained(self, path: str) -> None:
        """Load the pretrained weights at ``path`` (``MODEL.FLOW.WEIGHTS``), layout per network."""
        raise NotImplementedError(f"{type(self).__name__} cannot load MODEL.FLOW.WEIGHTS")

    def multiscale_flows(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> List[Tuple[torch.Tensor, int]]:
        """
        The flows to supervise in flow pretraining (:mod:`.pretrain`), coarse to fine, each
        (N, 2, h, w) in pixels of the given frames with its stride in those pixels; the last is
        the stride-16 flow :meth:`forward` returns. Networks with intermediate predictions
        (FlowNet-S) return them all.
        """
        flow, _ = self(cur_images, ref_images)
        return [(flow * FEATURE_STRIDE, FEATURE_STRIDE)]

    def pretrained_state(self) -> dict:
        """This network's weights as a checkpoint that :meth:`load_pretrained` reads."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its weights as pretrained")
