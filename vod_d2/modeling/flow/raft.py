"""
torchvision's RAFT-small (Teed & Deng, ECCV 2020) as the flow network of a flow-guided detector,
in the convention of :class:`~vod_d2.modeling.flow.flownet_s.FlowNetS`: the frames at half the
feature network's resolution, the flow returned at the feature stride 16 in feature pixels.

RAFT needs sizes divisible by 8, and torchvision's 4-level correlation pyramid at least 128
pixels: the half-resolution frames are padded on the right and bottom (replicating the border)
to the next multiple of 8, or to 128. RAFT's final flow, in pixels of its input, is
average-pooled over 8x8 blocks and divided by 8 (one block per feature position, in feature
pixels), then cropped to the ``ceil(H / 16) x ceil(W / 16)`` positions of the frame. The scale
map S is a 1x1 conv (zero weights, fixed bias of one, as for FlowNet-S) over RAFT's last
recurrent hidden state, which lives at 1/8 of RAFT's input, i.e. already at the feature stride.
"""

import logging
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.file_io import PathManager
from torchvision.models import get_weight
from torchvision.models.optical_flow import raft_small

from .base import FlowNetwork, ScaleMap
from .build import FLOW_NET_REGISTRY

__all__ = ["RAFTSmall"]

logger = logging.getLogger(__name__)

# RAFT downsamples its input by 8; at half resolution that is the feature stride 16.
_RAFT_STRIDE = 8
# torchvision's correlation pyramid halves RAFT's 1/8 maps 3 times and needs them >= 16.
_RAFT_MIN_SIZE = 128
_TORCHVISION_WEIGHTS = "Raft_Small_Weights."


@FLOW_NET_REGISTRY.register()
class RAFTSmall(FlowNetwork):
    """
    ``torchvision.models.optical_flow.raft_small`` (built with ``weights=None``) wrapped as a
    :class:`~vod_d2.modeling.flow.base.FlowNetwork`; ``forward`` follows that class.

    Its torchvision weights expect RGB frames mapped to [-1, 1] (torchvision's ``OpticalFlow``
    preset), which this wrapper does from the detector's [0, 255] frames.
    """

    @configurable
    def __init__(
        self, *, feature_channels: int, input_format: str = "BGR", num_flow_updates: int = 12
    ):
        """
        Args:
            feature_channels: channels C of the warped feature, hence of the scale map S.
            input_format: channel order of the given frames (``INPUT.FORMAT``).
            num_flow_updates: RAFT's recurrent refinement iterations (torchvision default 12).
        """
        super().__init__(feature_channels, input_format)
        if num_flow_updates < 1:
            raise ValueError(
                f"MODEL.FLOW.RAFT.NUM_FLOW_UPDATES must be >= 1, got {num_flow_updates}"
            )
        self.num_flow_updates = num_flow_updates
        self.raft = raft_small(weights=None, progress=False)
        self.scale = ScaleMap(self.raft.update_block.hidden_state_size, feature_channels)
        self._hidden: Optional[torch.Tensor] = None
        # RAFT returns only its flows; its hidden state, the top of the network S reads, is the
        # first output of every update-block call, the last call's being the final one.
        self.raft.update_block.register_forward_hook(self._record_hidden_state)

    @classmethod
    def from_config(cls, cfg, feature_channels: int):
        return {
            "feature_channels": feature_channels,
            "input_format": cfg.INPUT.FORMAT,
            "num_flow_updates": cfg.MODEL.FLOW.RAFT.NUM_FLOW_UPDATES,
        }

    def _record_hidden_state(self, module, inputs, outputs) -> None:
        self._hidden = outputs[0]

    def forward(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            cur_images, ref_images (Tensor): (N, 3, H, W) frames (see FlowNetwork).

        Returns:
            (flow (N, 2, ceil(H/16), ceil(W/16)), scale (N, C, ceil(H/16), ceil(W/16))).
        """
        if cur_images.shape != ref_images.shape:
            raise ValueError(
                f"RAFTSmall: frames of different shapes {tuple(cur_images.shape)} and "
                f"{tuple(ref_images.shape)}"
            )
        cur, ref = (
            self._to_network_input(images, "RGB", (127.5,) * 3, (127.5,) * 3)
            for images in (cur_images, ref_images)
        )
        h, w = cur.shape[-2:]
        pad_h, pad_w = (max(_RAFT_MIN_SIZE, size + -size % _RAFT_STRIDE) - size for size in (h, w))
        cur, ref = (F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") for x in (cur, ref))
        # RAFT's image1 is the frame the flow is defined on: image1(p) ~ image2(p + flow(p)).
        flow = self.raft(cur, ref, num_flow_updates=self.num_flow_updates)[-1]
        hidden, self._hidden = self._hidden, None
        flow = F.avg_pool2d(flow, _RAFT_STRIDE) / _RAFT_STRIDE
        out_h, out_w = -(-h // _RAFT_STRIDE), -(-w // _RAFT_STRIDE)
        return flow[..., :out_h, :out_w], self.scale(hidden[..., :out_h, :out_w])

    def load_pretrained(self, path: str) -> None:
        """
        Load RAFT-small weights into ``self.raft`` (the scale map keeps its initialisation).

        Args:
            path: either the name of a torchvision weights entry, "Raft_Small_Weights.C_T_V2"
                (or ``.C_T_V1``; FlyingChairs + FlyingThings), which torchvision downloads to its
                cache; or a path/URL of a file holding a ``raft_small().state_dict()`` (the
                file behind ``Raft_Small_Weights.C_T_V2.url`` is one), or a dict with it as
                ``"state_dict"`` (:meth:`pretrained_state`).

        Raises:
            ValueError: naming missing, unexpected or mis-shaped keys.
        """
        if path.startswith(_TORCHVISION_WEIGHTS):
            state = get_weight(path).get_state_dict(progress=True)
        else:
            with PathManager.open(path, "rb") as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
        ours = self.raft.state_dict()
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        mismatched = [
            f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(ours[k].shape)}"
            for k in sorted(set(ours) & set(state))
            if state[k].shape != ours[k].shape
        ]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{path} is not a torchvision raft_small state dict: missing keys {missing}, "
                f"unexpected keys {unexpected}, shape mismatches {mismatched}"
            )
        self.raft.load_state_dict(state)
        logger.info("Loaded RAFT-small weights from %s", path)

    def pretrained_state(self) -> dict:
        """``self.raft``'s weights, as :meth:`load_pretrained` reads them."""
        return {"state_dict": {k: v.detach().clone() for k, v in self.raft.state_dict().items()}}
