"""
The impression memory of Impression Network (Hetang et al., 2017, §3.1-3.3, Eq. 1-4,
Algorithm 1): a feature that absorbs every key frame's feature and is carried, warped by flow,
from key frame to key frame.

At key frame k with feature ``f_k`` (all maps (N, C, H, W), at the feature stride):

* Eq. 1, the first key frame of a video: ``f_0^imp = f_0^task = f_0``.
* Otherwise the previous impression is warped to the new key frame,
  ``f_{k-1}^imp' = W(f_{k-1}^imp, F(I_k^key, I_{k-1}^key)) * S``, and
* Eq. 2: ``1 - w_k, w_k = softmax(N_q(f_{k-1}^imp'), N_q(f_k))`` position-wise;
* Eq. 3: ``f_k^task = (1 - w_k) * f_{k-1}^imp' + w_k * f_k``, shared by the key frame's segment;
* Eq. 4: ``f_k^imp = (1 - g) * f_k + g * f_k^task``, g the memory gate.

With ``MODEL.VIDEO.IDENTITY_INIT`` (:mod:`.gate`) Eq. 3's output passes through a residual gate
to ``f_k`` that starts closed, so every key frame starts with its own feature (the single-frame
detector's), and N_q's last conv starts at zero (Eq. 2's weights at 0.5).

Eq. 4 with g = 0 gives ``f_k^imp = f_k``: the impression is then the key feature alone, so the
next task feature fuses two key features and nothing older ("only information of the previous
key frame", as training sees it, §3.2). g = 1 makes the impression the task feature, a running
quality-weighted average of every key frame so far; the paper's Table 1 uses g = 1 and Fig. 7
finds larger g better.

Table 1's switches (``MODEL.IMPRESSION``; :data:`TABLE1_VARIANTS`):

=====  ===============  ======  =============  ==========  =====================================
row    SPARSE_FEATURE   MEMORY  QUALITY_AWARE  END_TO_END  method
=====  ===============  ======  =============  ==========  =====================================
(a)    False            False   False          True        per-frame detector (74.2 mAP)
(b)    True             False   False          True        sparse features only = DFF (73.6)
(c)    True             True    False          True        impression, fixed 0.5 weights (75.2)
(d)    True             True    True           True        Impression Network (75.5)
(e)    True             True    True           False       (d) not end to end (70.3)
=====  ===============  ======  =============  ==========  =====================================

This module honours MEMORY, QUALITY_AWARE and GATE; the meta-architecture honours
SPARSE_FEATURE (key frames only) and END_TO_END. (e), as §4.2 defines it: the feature network
is the single-frame detector's (row (a)) and the flow network the off-the-shelf FlyingChairs
FlowNet-S, both kept fixed (``FlowNetwork.freeze()``, which also keeps S at 1); only N_q and
the detection sub-network learn.
"""

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ..flow import build_flow_net
from ..flow.base import FlowNetwork
from ..frames import NONE
from .build import TemporalModule
from .gate import GateSpec, maybe_gate
from .key_frame import KEY_FRAME_REGISTRY, KeyFrameModule
from .quality_aggregation import QualityAwareAggregation

__all__ = ["ImpressionMemory", "ImpressionKeyFrames", "TABLE1_VARIANTS"]

# MODEL.IMPRESSION switches of each row of Table 1 (see the module docstring).
TABLE1_VARIANTS: Dict[str, Dict[str, bool]] = {
    "a": {"SPARSE_FEATURE": False, "MEMORY": False, "QUALITY_AWARE": False, "END_TO_END": True},
    "b": {"SPARSE_FEATURE": True, "MEMORY": False, "QUALITY_AWARE": False, "END_TO_END": True},
    "c": {"SPARSE_FEATURE": True, "MEMORY": True, "QUALITY_AWARE": False, "END_TO_END": True},
    "d": {"SPARSE_FEATURE": True, "MEMORY": True, "QUALITY_AWARE": True, "END_TO_END": True},
    "e": {"SPARSE_FEATURE": True, "MEMORY": True, "QUALITY_AWARE": True, "END_TO_END": False},
}


class ImpressionMemory(TemporalModule):
    """
    The impression of one video, and the fusion of Eq. 2-4.

    * :meth:`fuse` is the stateless fusion of a key feature with an aligned impression; training
      calls it on a triplet, with the warped old key feature standing in for the impression
      (§3.2: ``f_fuse`` from ``{f_old^key', f_new^key}``).
    * :meth:`update` is Algorithm 1's key-frame step at test time: warp the stored impression to
      the new key frame, fuse, store the new impression and the key frame's images.
    * :meth:`reset` forgets the video (call it before every video).

    With ``memory=False`` (Table 1 (a), (b)) there is no impression: :meth:`update` returns the
    key feature and stores nothing (and runs no flow).
    """

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        memory: bool = True,
        quality_aware: bool = True,
        gate: float = 1.0,
        quality_dims: Sequence[int] = (256, 16),
        identity_init: bool = False,
        residual_gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            channels: channels C of the key features.
            memory: keep an impression (Table 1 "impression?"); False: DFF.
            quality_aware: weights from N_q (Eq. 2; Table 1 (d)); False: fixed 0.5 (c).
            gate: g of Eq. 4, in [0, 1].
            quality_dims: widths of N_q's 3x3 and first 1x1 conv (§3.3: 256, 16).
            identity_init: start every key frame at its own feature (a residual gate on Eq. 3)
                and N_q at equal weights (``MODEL.VIDEO.IDENTITY_INIT``).
            residual_gate: that gate (``MODEL.VIDEO.GATE``).
        """
        super().__init__()
        if quality_aware and not memory:
            raise ValueError(
                "MODEL.IMPRESSION.QUALITY_AWARE weighs the impression against the key feature "
                "and needs MODEL.IMPRESSION.MEMORY (Table 1 has no quality-aware row without it)"
            )
        if not 0.0 <= gate <= 1.0:
            raise ValueError(f"MODEL.IMPRESSION.GATE (g of Eq. 4) must lie in [0, 1], got {gate}")
        self.channels = channels
        self.gate = float(gate)
        self.aggregation = (
            QualityAwareAggregation(
                channels, quality=quality_aware, dims=tuple(quality_dims), zero_init=identity_init
            )
            if memory
            else None
        )
        self.residual_gate = maybe_gate(identity_init and memory, channels, residual_gate)
        self.impression: Optional[torch.Tensor] = None
        self.key_images: Optional[torch.Tensor] = None
        self.key_frame_keys: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, cfg, channels: int):
        return {
            "channels": channels,
            "memory": cfg.MODEL.IMPRESSION.MEMORY,
            "quality_aware": cfg.MODEL.IMPRESSION.QUALITY_AWARE,
            "gate": cfg.MODEL.IMPRESSION.GATE,
            "quality_dims": cfg.MODEL.IMPRESSION.QUALITY_DIMS,
            "identity_init": cfg.MODEL.VIDEO.IDENTITY_INIT,
            "residual_gate": GateSpec.from_config(cfg),
        }

    @property
    def enabled(self) -> bool:
        """Whether there is an impression at all (``MODEL.IMPRESSION.MEMORY``)."""
        return self.aggregation is not None

    def fuse(
        self,
        key_feature: torch.Tensor,
        warped_impression: Optional[torch.Tensor],
        return_weights: bool = False,
    ) -> Union[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Eq. 1-4 for one key frame.

        Args:
            key_feature (Tensor): (N, C, H, W) ``f_k``.
            warped_impression (Tensor or None): (N, C, H, W) ``f_{k-1}^imp'``, the previous
                impression already aligned to this key frame; None for a video's first key
                frame (Eq. 1).
            return_weights: also return the (2, N, 1, H, W) weights ``(1 - w_k, w_k)`` of
                Eq. 2 (impression first), which sum to one at every position; None at Eq. 1.

        Returns:
            (task feature ``f_k^task``, new impression ``f_k^imp``), both (N, C, H, W)
            (and the weights).
        """
        if not self.enabled:
            raise RuntimeError(
                "ImpressionMemory.fuse: MODEL.IMPRESSION.MEMORY is off, there is nothing to fuse"
            )
        if key_feature.dim() != 4 or key_feature.shape[1] != self.channels:
            raise ValueError(
                f"ImpressionMemory was built for (N, {self.channels}, H, W) features, got "
                f"{tuple(key_feature.shape)}"
            )
        if warped_impression is None:
            task, impression, weights = key_feature, key_feature, None  # Eq. 1
        else:
            task, weights = self.aggregation(
                [warped_impression, key_feature], return_weights=True
            )  # Eq. 2-3
            if self.residual_gate is not None:
                task = self.residual_gate(key_feature, task)
            # Eq. 4, exact at both ends: g = 0 gives f_k itself, g = 1 f_k^task itself.
            impression = (1.0 - self.gate) * key_feature + self.gate * task
        return (task, impression, weights) if return_weights else (task, impression)

    def update(
        self,
        key_feature: torch.Tensor,
        key_images: torch.Tensor,
        flow_net: FlowNetwork,
        key_frame_keys: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Algorithm 1, lines 3-10, for the next key frame of the current video.

        Args:
            key_feature (Tensor): (N, C, h, w) ``f_k = N_feat(I_k^key)``, at the feature stride.
            key_images (Tensor): (N, 3, H, W) the key frames, as the flow network takes them.
            flow_net: the flow network warping the impression from the previous key frame
                (run once per key frame after the first; not at all when the memory is off).
            key_frame_keys (Tensor or None): the key frames' keys, for a flow network that
                reads which frames it sees (:meth:`FlowNetwork.frame_keys`).

        Returns:
            Tensor: (N, C, h, w) the task feature ``f_k^task`` of the key frame's segment.
        """
        if not self.enabled:
            return key_feature
        warped = None
        if self.impression is not None:
            if key_images.shape != self.key_images.shape:
                raise ValueError(
                    f"ImpressionMemory: key frames of one video must share a shape, got "
                    f"{tuple(key_images.shape)} after {tuple(self.key_images.shape)}; call "
                    f"reset() before every video"
                )
            warped = flow_net.propagate(
                self.impression, key_images, self.key_images, key_frame_keys, self.key_frame_keys
            )
        task, self.impression = self.fuse(key_feature, warped)
        self.key_images = key_images
        self.key_frame_keys = key_frame_keys
        return task

    def reset(self) -> None:
        """Forget the current video's impression."""
        self.impression = None
        self.key_images = None
        self.key_frame_keys = None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, memory={self.enabled}, gate={self.gate}"


@KEY_FRAME_REGISTRY.register()
class ImpressionKeyFrames(KeyFrameModule):
    """
    Impression Network (and, with ``MODEL.IMPRESSION.MEMORY`` off, Deep Feature Flow) in a
    key-frame detector (:class:`vod_d2.modeling.KeyFrameRCNN`). A key frame's heavy feature
    f_k becomes its segment's task feature through the impression memory (Algorithm 1); a
    non-key frame runs no backbone: its task feature is its key frame's, warped by the flow
    between the two raw frames and scaled by S, ``W(f_task, F(I_j, I_key)) * S`` (§3.1).

    ``MODEL.IMPRESSION.SPARSE_FEATURE`` False makes every frame a key frame (Table 1 (a)), and
    ``END_TO_END`` False keeps the flow network fixed (Table 1 (e); the meta-architecture keeps
    the feature network fixed).

    A flow network that reads which frames it sees (the diagnostic synthetic oracle) gets them
    as keys that travel in the payloads, ``"frame"``.
    """

    light_kind = NONE
    support_keys = ("task", "image")

    def __init__(self, cfg, feature_shape: ShapeSpec, low_shape: Optional[ShapeSpec]):
        """
        Args:
            cfg: config with ``MODEL.IMPRESSION`` and ``MODEL.FLOW``.
            feature_shape: the heavy feature's shape.
            low_shape: unused (non-key frames run no backbone).
        """
        super().__init__()
        self.memory = ImpressionMemory(cfg, feature_shape.channels)
        self.every_frame_is_key = not cfg.MODEL.IMPRESSION.SPARSE_FEATURE
        self.end_to_end = cfg.MODEL.IMPRESSION.END_TO_END
        # The flow warps non-key frames and the impression: a per-frame detector without
        # memory (Table 1 (a)) has none.
        uses_flow = not self.every_frame_is_key or self.memory.enabled
        self.flow_net = build_flow_net(cfg, feature_shape.channels) if uses_flow else None
        if self.flow_net is not None and not self.end_to_end:
            self.flow_net.freeze()
        self.reads_frames = self.flow_net is not None and self.flow_net.reads_frames
        if self.reads_frames:
            self.support_keys = ("task", "image", "frame")
        self._shape = feature_shape

    def key_frame(self, feature, images, frames):
        payload = self.non_key_frame(None, images, frames)
        task = self.memory.update(feature, images, self.flow_net, payload.get("frame"))
        return {"task": task, **payload}

    def non_key_frame(self, light, images, frames):
        if self.reads_frames:
            return {"image": images, "frame": self.flow_net.frame_keys(frames).to(images.device)}
        return {"image": images}

    def propagate(self, target, key):
        return self.flow_net.propagate(
            key["task"], target["image"], key["image"], target.get("frame"), key.get("frame")
        )

    def output_shape(self) -> ShapeSpec:
        return self._shape
