"""
FlowNet-S (Dosovitskiy et al., ICCV 2015) as Deep Feature Flow runs it for video detection:
on the two frames at half the feature network's resolution, with its flow and the scale map S
taken at stride 8 of that input, i.e. the feature stride 16 of the full-resolution frame.
``MODEL.FLOW.INPUT_SCALE`` s sets that resolution (the papers' 0.5 by default): the top map is
then taken at ``16 * s`` of the network's input (see :meth:`FlowNetS._refine`).

Architecture (widths at ``width_divisor=1``; every conv is followed by LeakyReLU(0.1) except the
flow predictions; sizes for an input of h x w at half resolution):

* encoder: conv1 7x7/2 (64), conv2 5x5/2 (128), conv3 5x5/2 (256), conv3_1 3x3 (256),
  conv4 3x3/2 (512), conv4_1 (512), conv5 3x3/2 (512), conv5_1 (512), conv6 3x3/2 (1024),
  conv6_1 (1024); conv6_1 is at stride 64.
* refinement, for k = 5, 4, 3, 2: ``concat_k = [conv_k, deconv_k(concat_{k+1}),
  upsample(predict_flow_{k+1}(concat_{k+1}))]`` (concat_6 = conv6_1), each deconv a 4x4/2
  transposed conv (512, 256, 128, 64 channels) cropped to the encoder map, each flow
  prediction a 3x3 conv to 2 channels, each upsampling a 4x4/2 transposed conv on the 2-channel
  flow. concat_2 (194 channels) is at stride 4.
* DFF's head: concat_2 is 2x2-average-pooled to stride 8, and both ``predict_flow2`` and the
  1x1 scale-map conv read the pooled map. At another input scale s, concat_2 (at ``4 / s``
  pixels of the frame) is resampled to the frame's stride 16 instead
  (:meth:`~vod_d2.modeling.flow.base.FlowNetwork.to_feature_grid`: ``4 s`` x ``4 s`` average
  pooling when that is an integer, e.g. 4x4 at s = 1).

FlowNet is trained on flow divided by 20 (``div_flow``) and predicts, at every level, flow in
pixels of its input divided by 20. At stride 8 of the input one feature pixel is 8 input pixels,
so the flow in feature pixels is ``20 / 8 = 2.5`` times the prediction: DFF's
``Convolution5 * 2.5`` (``20 / (16 s)`` in general).

Pretrained weights (``MODEL.FLOW.WEIGHTS``): the PyTorch FlowNetS of ClementPinard/FlowNetPytorch
(``models/FlowNetS.py``, ``batchNorm=False``), e.g. its ``flownets_EPE1.951.pth.tar`` trained on
FlyingChairs. See :func:`load_flownets_checkpoint` for the exact layout.
"""

import logging
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.file_io import PathManager
from torch import nn

from .base import FEATURE_STRIDE, FlowNetwork, ScaleMap
from .build import FLOW_NET_REGISTRY

__all__ = ["FlowNetS", "load_flownets_checkpoint"]

logger = logging.getLogger(__name__)

# (name, kernel, stride, output width) of the encoder convs at width_divisor 1.
_ENCODER = (
    ("conv1", 7, 2, 64),
    ("conv2", 5, 2, 128),
    ("conv3", 5, 2, 256),
    ("conv3_1", 3, 1, 256),
    ("conv4", 3, 2, 512),
    ("conv4_1", 3, 1, 512),
    ("conv5", 3, 2, 512),
    ("conv5_1", 3, 1, 512),
    ("conv6", 3, 2, 1024),
    ("conv6_1", 3, 1, 1024),
)
# Refinement levels, coarse to fine: (level, encoder map it joins, deconv width).
_DECODER = ((5, "conv5_1", 512), (4, "conv4_1", 256), (3, "conv3_1", 128), (2, "conv2", 64))
# The stride of concat_2, the refinement's last map, on the network's input.
_TOP_STRIDE = 4


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


@FLOW_NET_REGISTRY.register()
class FlowNetS(FlowNetwork):
    """
    FlowNet-S with DFF's stride-16 head; see the module docstring. ``forward`` follows
    :class:`~vod_d2.modeling.flow.base.FlowNetwork`.

    Without a checkpoint the convs get MSRA (leaky-ReLU) initialisation and the flow predictions
    start at zero, so the flow is zero and warping the identity until training moves them.
    """

    @configurable
    def __init__(
        self,
        *,
        feature_channels: int,
        input_format: str = "BGR",
        network_format: str = "RGB",
        pixel_mean: Sequence[float] = (114.75, 110.16, 104.805),
        width_divisor: int = 1,
        div_flow: float = 20.0,
        input_scale: float = 0.5,
    ):
        """
        Args:
            feature_channels: channels C of the warped feature, hence of the scale map S.
            input_format: channel order of the given frames (``INPUT.FORMAT``).
            network_format: channel order the weights expect ("RGB" for the ClementPinard
                checkpoints, "BGR" for Caffe-converted ones such as DFF's).
            pixel_mean: per-channel mean subtracted before dividing by 255, in
                ``network_format`` order and [0, 255] units.
            width_divisor: divides every width (1: FlowNet-S; larger: a tiny net for tests).
            div_flow: the factor the weights' flow was divided by in training (FlowNet: 20).
            input_scale: the network sees the frames resized by this factor (DFF: 0.5).
        """
        super().__init__(feature_channels, input_format, input_scale)
        if network_format not in ("BGR", "RGB"):
            raise ValueError(f"MODEL.FLOW.FLOWNET.FORMAT must be BGR or RGB, got {network_format}")
        if width_divisor < 1 or any(w % width_divisor for *_, w in _ENCODER):
            raise ValueError(
                f"MODEL.FLOW.FLOWNET.WIDTH_DIVISOR={width_divisor} must divide every FlowNet-S "
                f"width {[w for *_, w in _ENCODER]}"
            )
        self.network_format = network_format
        self.pixel_mean = tuple(pixel_mean)
        self.div_flow = div_flow

        widths = {}
        in_channels = 6
        for name, kernel, stride, width in _ENCODER:
            width //= width_divisor
            self.add_module(name, nn.Conv2d(in_channels, width, kernel, stride, kernel // 2))
            widths[name] = in_channels = width
        for level, skip, width in _DECODER:
            width //= width_divisor
            # Each level reads concat_{level+1} (conv6_1 at the coarsest).
            self.add_module(f"predict_flow{level + 1}", self._predictor(in_channels))
            self.add_module(
                f"upsampled_flow{level + 1}_to_{level}",
                nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=False),
            )
            self.add_module(
                f"deconv{level}", nn.ConvTranspose2d(in_channels, width, 4, 2, 1, bias=False)
            )
            in_channels = widths[skip] + width + 2
        self.predict_flow2 = self._predictor(in_channels)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for level in range(2, 7):
            nn.init.zeros_(getattr(self, f"predict_flow{level}").weight)
        self.scale = ScaleMap(in_channels, feature_channels)

    @staticmethod
    def _predictor(in_channels: int) -> nn.Conv2d:
        return nn.Conv2d(in_channels, 2, 3, 1, 1, bias=False)

    @classmethod
    def from_config(cls, cfg, feature_channels: int):
        return {
            "feature_channels": feature_channels,
            "input_format": cfg.INPUT.FORMAT,
            "network_format": cfg.MODEL.FLOW.FLOWNET.FORMAT,
            "pixel_mean": cfg.MODEL.FLOW.FLOWNET.PIXEL_MEAN,
            "width_divisor": cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR,
            "div_flow": cfg.MODEL.FLOW.FLOWNET.DIV_FLOW,
            "input_scale": cfg.MODEL.FLOW.INPUT_SCALE,
        }

    def forward(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            cur_images, ref_images (Tensor): (N, 3, H, W) frames (see FlowNetwork).

        Returns:
            (flow (N, 2, ceil(H/16), ceil(W/16)), scale (N, C, ceil(H/16), ceil(W/16))).
        """
        top, _ = self._refine(cur_images, ref_images)
        flow = self.predict_flow2(top) * (self.div_flow / (FEATURE_STRIDE * self.input_scale))
        return flow, self.scale(top)

    def multiscale_flows(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> List[Tuple[torch.Tensor, int]]:
        """
        Every level's flow, FlowNet's multi-scale training targets: ``predict_flow6`` ..
        ``predict_flow3`` of the refinement and the stride-16 output, each in pixels of the
        given frames, with its stride in those pixels (128 .. 16, and 16).
        """
        top, levels = self._refine(cur_images, ref_images)
        # A level predicts flow / div_flow in pixels of the network's (scaled) input.
        to_frame = self.div_flow / self.input_scale
        flows = [(flow * to_frame, stride / self.input_scale) for flow, stride in levels]
        flows.append((self.predict_flow2(top) * to_frame, FEATURE_STRIDE))
        return flows

    def _refine(
        self, cur_images: torch.Tensor, ref_images: torch.Tensor
    ) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, int]]]:
        """
        The encoder and the refinement up to DFF's pooled top map.

        Returns:
            tuple: the pooled concat_2 (N, 194 / width_divisor, ceil(H/16), ceil(W/16)), and the
            refinement's flow predictions (flow6 .. flow3, each (N, 2, h, w) in units of
            div_flow pixels of the network's input) with their strides on that input.
        """
        if cur_images.shape != ref_images.shape:
            raise ValueError(
                f"FlowNetS: frames of different shapes {tuple(cur_images.shape)} and "
                f"{tuple(ref_images.shape)}"
            )
        # FlowNet's image 1 is the frame the flow is defined on (the current one).
        x = torch.cat(
            [
                self._to_network_input(images, self.network_format, self.pixel_mean, (255.0,) * 3)
                for images in (cur_images, ref_images)
            ],
            dim=1,
        )
        encoder = {}
        for name, *_ in _ENCODER:
            x = encoder[name] = _leaky(getattr(self, name)(x))
        levels = []
        for level, skip, _ in _DECODER:
            target = encoder[skip]
            flow = getattr(self, f"predict_flow{level + 1}")(x)
            levels.append((flow, 2 ** (level + 1)))
            up_flow = _crop_like(
                getattr(self, f"upsampled_flow{level + 1}_to_{level}")(flow), target
            )
            up_feature = _leaky(_crop_like(getattr(self, f"deconv{level}")(x), target))
            x = torch.cat([target, up_feature, up_flow], dim=1)
        # concat_2 is at stride 4 of the input, 4 / s pixels of the frame.
        size = self.feature_size(cur_images)
        return self.to_feature_grid(x, _TOP_STRIDE / self.input_scale, size), levels

    def load_pretrained(self, path: str) -> None:
        """Load a ClementPinard FlowNetS checkpoint (see :func:`load_flownets_checkpoint`)."""
        load_flownets_checkpoint(self, path)

    def pretrained_state(self) -> dict:
        """The weights in ClementPinard's layout (the scale map S aside), at this width."""
        state = {
            _checkpoint_key(k): v.detach().clone()
            for k, v in self.state_dict().items()
            if not k.startswith("scale.")
        }
        return {"arch": "flownets", "div_flow": self.div_flow, "state_dict": state}


def _crop_like(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """
    Crop a 2x-upsampled map to ``target``'s size (odd encoder sizes). A 4x4/2 transposed conv
    with padding 1 is the unpadded one (Caffe's, DFF's) with its first row and column dropped,
    so this top-left crop is DFF's ``Crop(offset=(1, 1))``.
    """
    return x[:, :, : target.shape[2], : target.shape[3]]


def _checkpoint_key(name: str) -> str:
    """Our parameter name -> the checkpoint's: its convs and deconvs are ``nn.Sequential(conv,
    LeakyReLU)``, so ``conv1.weight`` is stored as ``conv1.0.weight``."""
    layer, param = name.rsplit(".", 1)
    if layer.startswith(("conv", "deconv")):
        return f"{layer}.0.{param}"
    return name


def load_flownets_checkpoint(model: FlowNetS, path: str) -> None:
    """
    Load FlyingChairs-pretrained FlowNet-S weights in the layout of ClementPinard/FlowNetPytorch
    (``models/FlowNetS.py``, ``FlowNetS(batchNorm=False)``; e.g. ``flownets_EPE1.951.pth.tar``).

    The file is ``torch.save`` of either a dict with a ``"state_dict"`` entry (as that repository
    saves it, next to ``"arch": "flownets"``, ``"div_flow"``, ``"epoch"``, ``"best_EPE"``) or the
    state dict itself. Its 33 tensors, at ``width_divisor=1``:

    * ``convK.0.weight`` / ``convK.0.bias`` for K in 1, 2, 3, 3_1, 4, 4_1, 5, 5_1, 6, 6_1:
      (64, 6, 7, 7), (128, 64, 5, 5), (256, 128, 5, 5), (256, 256, 3, 3), (512, 256, 3, 3),
      (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3), (1024, 512, 3, 3),
      (1024, 1024, 3, 3); biases (out,). Input channels of conv1: image 1 (the current frame)
      then image 2 (the reference), 3 each.
    * ``deconvK.0.weight`` (no bias), ``ConvTranspose2d`` layout (in, out, 4, 4): deconv5
      (1024, 512), deconv4 (1026, 256), deconv3 (770, 128), deconv2 (386, 64).
    * ``predict_flowK.weight`` (no bias) (2, in, 3, 3): K = 6, 5, 4, 3, 2 with in = 1024, 1026,
      770, 386, 194; output channel 0 is x, 1 is y.
    * ``upsampled_flowK_to_J.weight`` (no bias) (2, 2, 4, 4) for 6_to_5, 5_to_4, 4_to_3, 3_to_2.

    Those weights expect RGB frames scaled to [0, 1] minus the mean (0.45, 0.432, 0.411)
    (``MODEL.FLOW.FLOWNET.FORMAT "RGB"`` and ``PIXEL_MEAN`` (114.75, 110.16, 104.805), the
    defaults) and predict flow / 20 (``DIV_FLOW`` 20; a ``"div_flow"`` entry of the checkpoint
    must agree with it). The scale map S is not in the checkpoint and keeps its initialisation.

    Raises:
        ValueError: naming the missing, unexpected and mis-shaped keys, or a ``div_flow`` that
            disagrees with the model's.
    """
    with PathManager.open(path, "rb") as f:
        checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path}: expected a FlowNetS state dict (or a dict with a 'state_dict' entry), got "
            f"{type(checkpoint).__name__}"
        )
    if isinstance(checkpoint, Mapping) and "div_flow" in checkpoint:
        if float(checkpoint["div_flow"]) != model.div_flow:
            raise ValueError(
                f"{path} was trained on flow divided by {checkpoint['div_flow']}, but "
                f"MODEL.FLOW.FLOWNET.DIV_FLOW is {model.div_flow}"
            )
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("scale.")}
    expected = {_checkpoint_key(k): k for k in ours}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(ours[expected[key]].shape)}"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(ours[expected[key]].shape)
    ]
    if missing or unexpected or mismatched:
        problems: List[str] = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                problems.append(f"{what} keys: {', '.join(keys)}")
        if mismatched:
            problems.append(
                "shape mismatches (MODEL.FLOW.FLOWNET.WIDTH_DIVISOR must be the checkpoint's: 1 "
                f"for FlyingChairs FlowNet-S): {'; '.join(mismatched)}"
            )
        raise ValueError(
            f"{path} is not a ClementPinard FlowNetS (batchNorm=False) checkpoint for this model: "
            + ". ".join(problems)
        )
    converted: Dict[str, torch.Tensor] = {
        ours_key: state[key] for key, ours_key in expected.items()
    }
    model.load_state_dict(converted, strict=False)
    logger.info("Loaded FlowNet-S weights (%d tensors) from %s", len(converted), path)
