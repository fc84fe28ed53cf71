"""
torchvision's RAFT-small (Teed & Deng, ECCV 2020) as the flow network of a flow-guided detector,
in the convention of :class:`~vod_d2.modeling.flow.flownet_s.FlowNetS`: the frames at
``MODEL.FLOW.INPUT_SCALE`` s times the feature network's resolution (the papers' half by
default), the flow returned at the feature stride 16 in feature pixels.

RAFT needs sizes divisible by 8, and torchvision's 4-level correlation pyramid at least 128
pixels: the scaled frames are padded on the right and bottom (replicating the border) to the
next multiple of 8, or to 128. RAFT's final flow, in pixels of its input, is average-pooled over
the ``16 s`` x ``16 s`` input pixels of each feature position (8x8 at s = 0.5; bilinearly
resampled when ``16 s`` is not an integer) and divided by ``16 s`` (feature pixels), then
cropped to the ``ceil(H / 16) x ceil(W / 16)`` positions of the frame. The scale map S is a 1x1
conv (zero weights, fixed bias of one, as for FlowNet-S) over RAFT's last recurrent hidden
state, which lives at 1/8 of RAFT's input (the feature stride at s = 0.5; resampled to it
otherwise).

Pretrained weights (``MODEL.FLOW.WEIGHTS``, :meth:`RAFTSmall.load_pretrained`) come in two
formats, both FlyingChairs + FlyingThings3D RAFT-small with the same outputs: torchvision's
(``Raft_Small_Weights.C_T_V1``, downloaded by torchvision, or its file) and the authors' own
checkpoint (princeton-vl/RAFT's ``raft-small.pth``), whose names are mapped to torchvision's.
"""

import logging
import pickle
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.file_io import PathManager
from torchvision.models import get_weight
from torchvision.models.optical_flow import raft_small

from .base import FEATURE_STRIDE, FlowNetwork, ScaleMap
from .build import FLOW_NET_REGISTRY

__all__ = ["RAFTSmall"]

logger = logging.getLogger(__name__)

# RAFT downsamples its input by 8; at half resolution that is the feature stride 16.
_RAFT_STRIDE = 8
# torchvision's correlation pyramid halves RAFT's 1/8 maps 3 times and needs them >= 16.
_RAFT_MIN_SIZE = 128
_TORCHVISION_WEIGHTS = "Raft_Small_Weights."
# The authors' layer names (princeton-vl/RAFT core/extractor.py, update.py: SmallEncoder,
# BottleneckBlock, SmallMotionEncoder, ConvGRU, FlowHead) -> torchvision's, applied in order
# after the DataParallel "module." prefix is dropped. RAFT-small has no normalisation weights
# (instance norm without affine parameters in fnet, none in cnet), so the duplicate entry the
# authors' blocks register for the downsampling branch's norm never appears in its checkpoint.
_AUTHORS_TO_TORCHVISION = (
    (r"^fnet\.", "feature_encoder."),
    (r"^cnet\.", "context_encoder."),
    (r"^(\w+_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(\w+_encoder)\.conv2\.", r"\1.conv."),
    (r"\.(layer\d\.\d)\.conv(\d)\.", r".\1.convnormrelu\2.0."),
    (r"^update_block\.encoder\.convc1\.", "update_block.motion_encoder.convcorr1.0."),
    (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.", "update_block.recurrent_block.convgru1."),
)
# Which format a state dict is in: the encoders' names tell them apart.
_TORCHVISION_ENCODERS = ("feature_encoder.", "context_encoder.")
_AUTHORS_ENCODERS = ("fnet.", "cnet.")


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
        self,
        *,
        feature_channels: int,
        input_format: str = "BGR",
        num_flow_updates: int = 12,
        input_scale: float = 0.5,
    ):
        """
        Args:
            feature_channels: channels C of the warped feature, hence of the scale map S.
            input_format: channel order of the given frames (``INPUT.FORMAT``).
            num_flow_updates: RAFT's recurrent refinement iterations (torchvision default 12).
            input_scale: RAFT sees the frames resized by this factor (the papers' 0.5).
        """
        super().__init__(feature_channels, input_format, input_scale)
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
            "input_scale": cfg.MODEL.FLOW.INPUT_SCALE,
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
        flow, hidden = self._raft(cur_images, ref_images)
        size = self.feature_size(cur_images)
        # A feature position covers 16 s x 16 s pixels of RAFT's input.
        pixels = FEATURE_STRIDE * self.input_scale
        flow = self.to_feature_grid(flow, 1.0 / self.input_scale, size) / pixels
        hidden = self.to_feature_grid(hidden, _RAFT_STRIDE / self.input_scale, size)
        return flow, self.scale(hidden)

    def multiscale_flows(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> List[Tuple[torch.Tensor, float]]:
        """
        What flow pretraining supervises: RAFT's final flow at its input's resolution (the
        flow its own training supervises), and the stride-16 flow :meth:`forward` returns,
        both in pixels of the given frames, with their strides in those pixels.
        """
        flow, _ = self._raft(cur_images, ref_images)
        size = self.feature_size(cur_images)
        full = flow / self.input_scale
        return [
            (full, 1.0 / self.input_scale),
            (self.to_feature_grid(full, 1.0 / self.input_scale, size), FEATURE_STRIDE),
        ]

    def _raft(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        RAFT on the scaled, padded frames, cropped back to the scaled frames.

        Returns:
            tuple: the final flow (N, 2, h, w) in pixels of RAFT's input, ``h, w`` the scaled
            frames' size, and the last hidden state (N, 96, ceil(h / 8), ceil(w / 8)).
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
        cells_h, cells_w = -(-h // _RAFT_STRIDE), -(-w // _RAFT_STRIDE)
        return flow[..., :h, :w], hidden[..., :cells_h, :cells_w]

    def load_pretrained(self, path: str) -> None:
        """
        Load RAFT-small weights into ``self.raft`` (the scale map keeps its initialisation),
        with one log line naming the format and the file.

        Args:
            path: the name of a torchvision weights entry, "Raft_Small_Weights.C_T_V1" (the
                authors' FlyingChairs + FlyingThings3D weights) or ``.C_T_V2``, which
                torchvision downloads to its cache; or a path/URL of a file in either format:
                torchvision's ``raft_small().state_dict()`` (the file behind such an entry's
                ``url``; or a dict with it as ``"state_dict"``, as :meth:`pretrained_state`
                writes it), or the authors' checkpoint (princeton-vl/RAFT ``raft-small.pth``:
                ``module.``-prefixed keys, their layer names).

        Raises:
            ValueError: for a file in neither format, naming it and what was expected; for
                missing, unexpected or mis-shaped keys, naming them.
        """
        if path.startswith(_TORCHVISION_WEIGHTS):
            state = get_weight(path).get_state_dict(progress=True)
            loaded_format = f"torchvision's {path}"
        else:
            state, loaded_format = _read_raft_checkpoint(path)
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
                f"{path} ({loaded_format}) does not fit torchvision's raft_small: missing keys "
                f"{missing}, unexpected keys {unexpected}, shape mismatches {mismatched}"
            )
        self.raft.load_state_dict(state)
        logger.info(
            f"Loaded RAFT-small weights ({loaded_format}, {len(state)} tensors) from {path}"
        )

    def pretrained_state(self) -> dict:
        """``self.raft``'s weights, as :meth:`load_pretrained` reads them."""
        return {"state_dict": {k: v.detach().clone() for k, v in self.raft.state_dict().items()}}


def _read_raft_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """
    The RAFT-small state dict in a file, in torchvision's names, and which format it was in.

    Raises:
        ValueError: one line naming the file and the two formats it can be in.
    """
    expected = (
        "expected torchvision's raft_small state dict (keys feature_encoder.*, context_encoder.*, "
        "update_block.*; Raft_Small_Weights.C_T_V1's file) or the authors' RAFT-small checkpoint "
        "(princeton-vl/RAFT raft-small.pth: keys module.fnet.*, module.cnet.*, "
        "module.update_block.*)"
    )
    try:
        with PathManager.open(path, "rb") as f:
            checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"{path} is not a RAFT-small checkpoint: torch.load cannot read it ({first_line}); "
            f"{expected}"
        ) from None
    state = checkpoint
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        state = checkpoint["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is not a RAFT-small checkpoint: it holds a {type(checkpoint).__name__} "
            f"that is not a state dict; {expected}"
        )
    # The authors save their DataParallel model: every name starts with "module.".
    names = [k[len("module.") :] if k.startswith("module.") else k for k in state]
    if any(k.startswith(_TORCHVISION_ENCODERS) for k in names):
        return dict(zip(names, state.values())), "torchvision's state dict"
    if any(k.startswith(_AUTHORS_ENCODERS) for k in names):
        renamed = {}
        for name, value in zip(names, state.values()):
            for pattern, replacement in _AUTHORS_TO_TORCHVISION:
                name = re.sub(pattern, replacement, name)
            renamed[name] = value
        return renamed, "the authors' checkpoint, renamed to torchvision's layers"
    found = ", ".join(list(state)[:3]) or "none"
    raise ValueError(f"{path} is not a RAFT-small checkpoint (keys {found}, ...); {expected}")
