"""
The contract of key-frame modules: what :class:`vod_d2.modeling.KeyFrameRCNN` asks of a method
whose heavy feature network runs on key frames only (LSTS, Impression Network, DFF).
"""

from typing import Dict, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

from ..frames import LIGHT, NONE, FrameInfo
from .build import TemporalModule

__all__ = ["KEY_FRAME_REGISTRY", "KeyFrameModule", "build_key_frame_module"]

KEY_FRAME_REGISTRY = Registry("KEY_FRAME")
KEY_FRAME_REGISTRY.__doc__ = """
Registry of key-frame modules (:class:`KeyFrameModule`), named by ``cfg.MODEL.KEY_FRAME.MODULE``.
The registered object is called with ``obj(cfg, feature_shape, low_shape)``: the
:class:`ShapeSpec` of the heavy feature (``cfg.MODEL.KEY_FRAME.IN_FEATURE``) and of the light
path's output (None without a light path), and returns a :class:`KeyFrameModule`.
"""


class KeyFrameModule(TemporalModule):
    """
    Base of key-frame modules. A video is cut into segments of l frames, each with one key
    frame (:func:`vod_d2.modeling.frames.key_frame_index`):

    * a key frame gets the heavy feature f_k; :meth:`key_frame` turns it into the segment's
      task feature and updates the module's recurrent memory (frames arrive in order; the
      memory is cleared by :meth:`reset` at every video);
    * another frame gets the light path of :attr:`light_kind` (the backbone's low-level part,
      ``LIGHT``; or no backbone at all, ``NONE``) and :meth:`non_key_frame` makes its payload;
    * its detection reads its key frame's payload (:attr:`support_keys` of it) and
      :meth:`propagate` gives its task feature.

    The same calls build the training graph: ``key_frame`` on the old key frame, then on the
    new one, ``non_key_frame`` and ``propagate`` on the annotated frame.

    Payloads are dicts of (N, ...) tensors; a key frame's holds its task feature as ``"task"``.
    """

    #: What non-key frames get: LIGHT (the backbone's light part) or NONE (raw images only).
    light_kind: str = LIGHT
    #: The key-frame payload entries non-key frames read.
    support_keys: Sequence[str] = ()
    #: Every frame is a key frame whatever the interval (a per-frame ablation).
    every_frame_is_key: bool = False
    #: Whether the feature network learns (False: it stays at its loaded weights).
    end_to_end: bool = True

    def key_frame(
        self, feature: torch.Tensor, images: torch.Tensor, frames: Sequence[FrameInfo]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            feature (Tensor): (N, C, h, w) heavy feature of the next key frame of N videos.
            images (Tensor): (N, 3, H, W) the frames, raw pixels ([0, 255], ``INPUT.FORMAT``).
            frames: their metadata (with their files, where they were read from files).

        Returns:
            dict: the key frame's payload, with its task feature ``"task"`` (N, C, h, w).
        """
        raise NotImplementedError

    def non_key_frame(
        self,
        light: Optional[torch.Tensor],
        images: torch.Tensor,
        frames: Sequence[FrameInfo],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            light (Tensor or None): (N, C_low, h, w) light-path feature, None for ``NONE``.
            images (Tensor): (N, 3, H, W) the frames, raw pixels.
            frames: their metadata.

        Returns:
            dict: the frame's payload.
        """
        raise NotImplementedError

    def propagate(
        self, target: Dict[str, torch.Tensor], key: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """
        Args:
            target: a non-key frame's payload (:meth:`non_key_frame`).
            key: its key frame's payload (at least :attr:`support_keys`).

        Returns:
            Tensor: (N, C, h, w) the frame's task feature.
        """
        raise NotImplementedError

    def output_shape(self) -> ShapeSpec:
        """Shape of the task feature the heads read."""
        raise NotImplementedError


def build_key_frame_module(
    cfg, feature_shape: ShapeSpec, low_shape: Optional[ShapeSpec]
) -> KeyFrameModule:
    """Build ``cfg.MODEL.KEY_FRAME.MODULE`` (see :data:`KEY_FRAME_REGISTRY`)."""
    name = cfg.MODEL.KEY_FRAME.MODULE
    module = KEY_FRAME_REGISTRY.get(name)(cfg, feature_shape, low_shape)
    if not isinstance(module, KeyFrameModule):
        raise TypeError(f"MODEL.KEY_FRAME.MODULE={name!r} built a {type(module).__name__}")
    if module.light_kind not in (LIGHT, NONE):
        raise ValueError(f"{name}.light_kind must be LIGHT or NONE, got {module.light_kind!r}")
    return module
