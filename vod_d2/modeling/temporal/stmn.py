"""
STMN (Xiao & Lee, "Video Object Detection with an Aligned Spatial-Temporal Memory", ECCV 2018):
a convolutional recurrent memory (the STMM cell, Eq. 1-4) run once forward and once backward in
time over the frames around the reference, each memory aligned to the next frame by MatchTrans
(§3.3) before it is used; the heads see the two memories of the reference concatenated (§3.1).

Training sequence. The paper puts a loss on every frame of a T=7 sequence. A vod_d2 training
sample has one annotated reference, so here the reference is the middle of the sequence (its
support frames are ``INPUT.VIDEO.TRAIN_OFFSETS``, e.g. (-30, -20, -10, 10, 20, 30)) and the loss
is on the reference alone: the middle frame is the one that sees the most context in both
directions, exactly what the centred test window gives every test frame. A per-frame loss would
need the support frames' annotations and heads on every frame, which the model contract does not
carry, so it is not offered.

Test sequence. Every frame is detected with the memories of its own window
``MODEL.VIDEO.TEST_WINDOW`` (the authors' "centre" test mode), so the memory never crosses into
another window or video and the module is stateless. A frame is in
2K+1 windows, so the memory-independent half of each cell step (``W * F``) is computed once per
frame by :meth:`STMNAggregation.encode`, as the frame enters the meta-architecture's cache.
"""

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from fvcore.nn import weight_init
from torch import nn

from ...layers import MatchTransAlign
from .build import TEMPORAL_AGGREGATION_REGISTRY, TemporalAggregation

__all__ = [
    "bn_star",
    "STMMCell",
    "ConvGRUCell",
    "SpatialTemporalMemory",
    "STMNAggregation",
    "STMNSingleFrameAggregation",
]

CELLS = ("STMM", "ConvGRU")
# Encodings of each direction's input projection, forward first.
_PROJECTIONS = ("forward_projection", "backward_projection")


def bn_star(x: torch.Tensor, k: float = 3.0) -> torch.Tensor:
    """
    BN* (§3.2, Fig. 3): squash values linearly from [0, mu + k * sigma] onto [0, 1] and clip
    the rest, so that every element is a valid gate value whatever the batch.

    As in the authors' implementation, ``mu`` and ``sigma`` (unbiased) are two scalars over the
    *positive* elements of the whole batch (ReLU zeros would otherwise drag the bound towards 0),
    computed afresh for every call (no running statistics, so any sequence length works at test
    time) and treated as constants by backpropagation. With no positive element the bound is 1.

    Args:
        x (Tensor): (N, C, H, W) gate pre-activations, normally a ReLU output.
        k (float): the bound is ``k`` standard deviations above the mean (the paper: 3).

    Returns:
        Tensor: same shape as ``x``, every element in [0, 1].
    """
    with torch.no_grad():
        # float32 statistics: half-precision sums over a whole batch would overflow.
        values = x.float()
        positive = values > 0
        count = positive.sum()
        # Masked sums instead of x[x > 0]: no host-device synchronisation.
        mean = torch.where(positive, values, 0).sum() / count.clamp(min=1)
        deviation = torch.where(positive, (values - mean) ** 2, 0)
        variance = deviation.sum() / (count - 1).clamp(min=1)
        bound = torch.where(count > 0, mean + k * variance.sqrt(), torch.ones_like(mean))
    return (x / bound).clamp(0.0, 1.0)


class STMMCell(nn.Module):
    """
    The spatial-temporal memory module, one time step (Eq. 1-4)::

        z_t = BN*(ReLU(W_z * F_t + U_z * M'_{t-1}))
        r_t = BN*(ReLU(W_r * F_t + U_r * M'_{t-1}))
        M~_t = ReLU(W * F_t + U * (M'_{t-1} . r_t))
        M_t = (1 - z_t) . M'_{t-1} + z_t . M~_t

    ``W_z, W_r, W`` are one convolution (``input_conv``, output channels in that order) so that
    they run on all frames of a sequence in one call before the recurrence (:meth:`project`);
    ``U_z, U_r`` are ``gate_conv`` (output channels in that order) and ``U`` is
    ``candidate_conv``, without biases (the ``W`` terms carry them), as in the authors' code.
    ReLU keeps the memory non-negative like the pretrained feature it replaces, which is what
    lets ``W_z, W_r, W`` start from a pretrained convolution
    (:mod:`vod_d2.modeling.temporal.weight_transfer`).
    """

    def __init__(
        self,
        in_channels: int,
        memory_channels: int,
        kernel_size: int = 3,
        memory_kernel_size: int = 3,
        bn_star_k: float = 3.0,
    ):
        """
        Args:
            in_channels: channels of the frame features F_t.
            memory_channels: channels of the memory M_t.
            kernel_size: kernel of ``W_z, W_r, W`` (odd; "same" padding).
            memory_kernel_size: kernel of ``U_z, U_r, U`` (odd; "same" padding).
            bn_star_k: ``k`` of :func:`bn_star`.
        """
        super().__init__()
        for name, size in [
            ("kernel_size", kernel_size),
            ("memory_kernel_size", memory_kernel_size),
        ]:
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {size}")
        self.memory_channels = memory_channels
        self.bn_star_k = bn_star_k
        self.input_conv = Conv2d(
            in_channels, 3 * memory_channels, kernel_size, padding=kernel_size // 2
        )
        self.gate_conv = Conv2d(
            memory_channels,
            2 * memory_channels,
            memory_kernel_size,
            padding=memory_kernel_size // 2,
            bias=False,
        )
        self.candidate_conv = Conv2d(
            memory_channels,
            memory_channels,
            memory_kernel_size,
            padding=memory_kernel_size // 2,
            bias=False,
        )
        for conv in (self.input_conv, self.gate_conv, self.candidate_conv):
            weight_init.c2_msra_fill(conv)

    def gate_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1-2: gates are BN*(ReLU(.)), in [0, 1] and exactly 0 where ReLU is."""
        return bn_star(F.relu(x), self.bn_star_k)

    def candidate_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 3: ReLU, so the memory lives where the pretrained feature did."""
        return F.relu(x)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """
        The memory-independent half of Eq. 1-3, ``[W_z * F, W_r * F, W * F]``.

        Args:
            features (Tensor): (N, C_in, H, W) frame features.

        Returns:
            Tensor: (N, 3 * M, H, W).
        """
        return self.input_conv(features)

    def forward(self, projected: torch.Tensor, memory: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            projected (Tensor): (N, 3 * M, H, W) :meth:`project` of the current frame.
            memory (Tensor or None): (N, M, H, W) aligned previous memory M'_{t-1}; None for
                the first frame of a sequence, where the memory is zero.

        Returns:
            Tensor: (N, M, H, W) the new memory M_t.
        """
        w_z, w_r, w = projected.chunk(3, dim=1)
        if memory is None:
            # M'_{t-1} = 0: the U terms vanish, r_t is not needed and Eq. 4 is z_t . M~_t.
            return self.gate_activation(w_z) * self.candidate_activation(w)
        u_z, u_r = self.gate_conv(memory).chunk(2, dim=1)
        z = self.gate_activation(w_z + u_z)
        r = self.gate_activation(w_r + u_r)
        candidate = self.candidate_activation(w + self.candidate_conv(memory * r))
        return (1 - z) * memory + z * candidate

    def extra_repr(self) -> str:
        return f"bn_star_k={self.bn_star_k}"


class ConvGRUCell(STMMCell):
    """
    The ConvGRU of Ballas et al. (the paper's "ConvGRU" ablation): :class:`STMMCell` with the
    standard sigmoid gates and tanh candidate, whose memory lies in [-1, 1].
    """

    def gate_activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def candidate_activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def extra_repr(self) -> str:
        return ""


class SpatialTemporalMemory(nn.Module):
    """
    One direction of STMN: runs a cell over a sequence of frame features, aligning the memory
    to every new frame with MatchTrans before the cell uses it (§3.3: M'_{t-1} replaces
    M_{t-1} in Eq. 1-4).
    """

    def __init__(self, cell: STMMCell, aligner: Optional[nn.Module]):
        """
        Args:
            cell: the recurrent cell (:class:`STMMCell` or :class:`ConvGRUCell`).
            aligner: ``aligner(feature, prev_feature, memory) -> aligned memory``, e.g.
                :class:`vod_d2.layers.MatchTransAlign`; None feeds M_{t-1} unaligned (the
                paper's "No-MatchTrans" ablation).
        """
        super().__init__()
        self.cell = cell
        self.aligner = aligner

    def forward(self, features: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features (Tensor): (N, T, C_in, H, W) frame features, in the order this memory
                visits them (T >= 1); the memory starts at zero before the first.
            projected (Tensor): (N, T, 3 M, H, W) the cell's :meth:`STMMCell.project` of them.

        Returns:
            Tensor: (N, M, H, W) the memory after the last frame.
        """
        memory = None
        for step in range(features.shape[1]):
            if memory is not None and self.aligner is not None:
                memory = self.aligner(features[:, step], features[:, step - 1], memory)
            memory = self.cell(projected[:, step], memory)
        return memory


def _build_cell(
    cell: str,
    in_channels: int,
    memory_channels: int,
    kernel_size: int,
    memory_kernel_size: int,
    bn_star_k: float,
) -> STMMCell:
    if cell not in CELLS:
        raise ValueError(f"MODEL.STMN.CELL={cell!r} is not one of {CELLS}")
    cls = STMMCell if cell == "STMM" else ConvGRUCell
    return cls(in_channels, memory_channels, kernel_size, memory_kernel_size, bn_star_k)


@TEMPORAL_AGGREGATION_REGISTRY.register()
class STMNAggregation(TemporalAggregation):
    """
    Bidirectional aligned spatial-temporal memory over a reference frame's window.

    The frames are ordered by their offsets (not by their position in ``support``): the
    forward memory visits the past frames oldest first and ends on the reference, the backward
    memory visits the future frames latest first and ends on the reference; the output is
    ``[M_forward, M_backward]`` of the reference (§3.1). Repeated offsets (windows clamped at
    a video border, DET images whose support frames are the image itself) are visited once and
    offset 0 is the reference, so a border frame simply has a shorter sequence on that side, as
    in the paper's test procedure. BN* statistics are shared by the samples of a batch that
    have the same set of offsets (they are processed together).

    A frame's encodings (:meth:`encode`) are its backbone map ``"feature"`` (MatchTrans reads
    it) and, for each direction, the memory-independent half of its cell step
    (``"forward_projection"``, ``"backward_projection"``).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: ShapeSpec,
        memory_channels: int,
        cell: str = "STMM",
        kernel_size: int = 3,
        memory_kernel_size: int = 3,
        bn_star_k: float = 3.0,
        bidirectional: bool = True,
        matchtrans: bool = True,
        matchtrans_k: int = 2,
        matchtrans_normalization: str = "sum",
    ):
        """
        Args:
            input_shape: shape of the backbone map (channels C_in, stride).
            memory_channels: channels M of each direction's memory (the paper: 512).
            cell: "STMM" (Eq. 1-4) or "ConvGRU" (ablation).
            kernel_size: kernel of ``W_z, W_r, W``.
            memory_kernel_size: kernel of ``U_z, U_r, U``.
            bn_star_k: ``k`` of BN* (the paper: 3).
            bidirectional: add the backward memory; False gives an online, forward-only model
                whose output has M channels.
            matchtrans: align the memory with MatchTrans before every use (§3.3).
            matchtrans_k: MatchTrans matches in a (2k+1)^2 window (the paper: k=2).
            matchtrans_normalization: how MatchTrans normalises its affinities
                (see :class:`vod_d2.layers.MatchTransAlign`).
        """
        super().__init__(input_shape)
        if input_shape.channels is None:
            raise ValueError("STMNAggregation needs the channels of MODEL.VIDEO.IN_FEATURE")
        self.memory_channels = memory_channels

        def direction():
            aligner = (
                MatchTransAlign(matchtrans_k, matchtrans_normalization) if matchtrans else None
            )
            return SpatialTemporalMemory(
                _build_cell(
                    cell,
                    input_shape.channels,
                    memory_channels,
                    kernel_size,
                    memory_kernel_size,
                    bn_star_k,
                ),
                aligner,
            )

        self.forward_memory = direction()
        self.backward_memory = direction() if bidirectional else None
        self.support_keys = ("feature",) + tuple(_PROJECTIONS[: len(self._directions)])

    @classmethod
    def from_config(cls, cfg, input_shape):
        stmn = cfg.MODEL.STMN
        return {
            "input_shape": input_shape,
            "memory_channels": stmn.MEMORY_CHANNELS,
            "cell": stmn.CELL,
            "kernel_size": stmn.KERNEL_SIZE,
            "memory_kernel_size": stmn.MEMORY_KERNEL_SIZE,
            "bn_star_k": stmn.BN_STAR_K,
            "bidirectional": stmn.BIDIRECTIONAL,
            "matchtrans": stmn.MATCHTRANS.ENABLED,
            "matchtrans_k": stmn.MATCHTRANS.K,
            "matchtrans_normalization": stmn.MATCHTRANS.NORMALIZATION,
        }

    @property
    def _directions(self) -> List[SpatialTemporalMemory]:
        return [m for m in (self.forward_memory, self.backward_memory) if m is not None]

    def encode(self, feature: torch.Tensor, frames=()) -> Dict[str, torch.Tensor]:
        """
        The per-frame part of STMN: a frame's features and, for each direction, the
        memory-independent half of Eq. 1-3 (``[W_z * F, W_r * F, W * F]``). Every frame is
        encoded once as it enters the test window, so a frame seen by 2K+1 windows is not
        projected 2K+1 times.

        Args:
            feature (Tensor): (N, C_in, H, W) backbone features.
            frames: the frames' metadata (unused).

        Returns:
            dict: ``"feature"`` (N, C_in, H, W) and ``"forward_projection"`` (and
            ``"backward_projection"`` when bidirectional), each (N, 3 M, H, W).
        """
        if feature.dim() != 4 or feature.shape[1] != self.input_shape.channels:
            raise ValueError(
                f"STMNAggregation was built for {self.input_shape.channels}-channel features "
                f"(MODEL.VIDEO.IN_FEATURE), got {tuple(feature.shape)}"
            )
        encoded = {"feature": feature}
        for name, direction in zip(_PROJECTIONS, self._directions):
            encoded[name] = direction.cell.project(feature)
        return encoded

    def forward(self, ref, support, offsets, frames=()):
        """
        Args:
            ref (dict): :meth:`encode` of B reference frames, each (B, ...).
            support (dict): the same for their S support frames, each (B, S, ...).
            offsets (Tensor): (B, S) int frame offsets ``support - reference`` (their signs and
                order give the temporal order).
            frames: the reference frames' metadata (unused).

        Returns:
            Tensor: (B, M, H, W) forward memory, or (B, 2 M, H, W) forward and backward
            memories concatenated, of each reference.
        """
        keys = self.support_keys
        if set(ref) < set(keys) or set(support) < set(keys):
            raise ValueError(
                f"STMNAggregation reads the encodings {keys} (STMNAggregation.encode), got "
                f"reference {sorted(ref)} and support {sorted(support)}"
            )
        b, c = ref["feature"].shape[:2]
        if (
            c != self.input_shape.channels
            or support["feature"].shape[2:] != ref["feature"].shape[1:]
        ):
            raise ValueError(
                f"STMNAggregation was built for {self.input_shape.channels}-channel features "
                f"(MODEL.VIDEO.IN_FEATURE), got reference {tuple(ref['feature'].shape)} and "
                f"support {tuple(support['feature'].shape)}"
            )
        if support["feature"].shape[:2] != offsets.shape or offsets.shape[0] != b:
            raise ValueError(
                f"support {tuple(support['feature'].shape)} and offsets {tuple(offsets.shape)} "
                f"do not match {b} reference frames"
            )
        rows = offsets.tolist()
        groups: Dict[Tuple[int, ...], List[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[tuple(sorted(set(row) - {0}))].append(i)
        if len(groups) == 1:
            ((window, _),) = groups.items()
            return self._aggregate(ref, support, rows, window)
        order, outputs = [], []
        for window, members in groups.items():
            index = torch.as_tensor(members, device=offsets.device)
            outputs.append(
                self._aggregate(
                    {k: v[index] for k, v in ref.items()},
                    {k: v[index] for k, v in support.items()},
                    [rows[i] for i in members],
                    window,
                )
            )
            order.extend(members)
        inverse = torch.as_tensor(order, device=offsets.device).argsort()
        return torch.cat(outputs)[inverse]

    def _aggregate(
        self,
        ref: Dict[str, torch.Tensor],
        support: Dict[str, torch.Tensor],
        rows: List[List[int]],
        window: Tuple[int, ...],
    ) -> torch.Tensor:
        """
        Memories of references whose distinct non-zero offsets are all ``window`` (sorted);
        ``rows`` are their offsets, which locate each offset's frame in ``support``.
        """

        def sequence(key, offsets):
            if not offsets:
                return ref[key][:, None]
            index = torch.as_tensor([[row.index(o) for o in offsets] for row in rows])
            samples = torch.arange(len(rows))[:, None]
            device = ref[key].device
            frames = support[key][samples.to(device), index.to(device)]
            return torch.cat([frames, ref[key][:, None]], dim=1)

        past = [o for o in window if o < 0]
        future = [o for o in reversed(window) if o > 0]
        memories = [
            direction(sequence("feature", offsets), sequence(name, offsets))
            for direction, name, offsets in zip(self._directions, _PROJECTIONS, (past, future))
        ]
        return torch.cat(memories, dim=1)

    def output_shape(self) -> ShapeSpec:
        directions = 1 if self.backward_memory is None else 2
        return ShapeSpec(channels=directions * self.memory_channels, stride=self.input_shape.stride)


@TEMPORAL_AGGREGATION_REGISTRY.register()
class STMNSingleFrameAggregation(TemporalAggregation):
    """
    The single-frame detector STMN starts from: ``ReLU(W * F_t)`` on the reference alone.

    The paper converts the convolution between the backbone and the RoI pooling (R-FCN's
    reduction conv, VGG-16's conv5) into the STMM. detectron2's DC5 Faster R-CNN has no such
    layer (the heads read res5 directly), so this module adds it: train it as a static detector
    (``MODEL.VIDEO.AGGREGATION STMNSingleFrameAggregation``, no support frames), then
    :mod:`vod_d2.modeling.temporal.weight_transfer` copies ``feature_conv`` into ``W_z, W_r, W``
    of both STMN directions and widens the heads to the two concatenated memories.
    """

    support_keys = ()

    @configurable
    def __init__(self, *, input_shape: ShapeSpec, memory_channels: int, kernel_size: int = 3):
        """
        Args:
            input_shape: shape of the backbone map (channels C_in, stride).
            memory_channels: output channels M (those of the STMN memory it initialises).
            kernel_size: kernel of the convolution (STMN's ``KERNEL_SIZE``).
        """
        super().__init__(input_shape)
        self._shape = ShapeSpec(channels=memory_channels, stride=input_shape.stride)
        self.feature_conv = Conv2d(
            input_shape.channels, memory_channels, kernel_size, padding=kernel_size // 2
        )
        weight_init.c2_msra_fill(self.feature_conv)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "memory_channels": cfg.MODEL.STMN.MEMORY_CHANNELS,
            "kernel_size": cfg.MODEL.STMN.KERNEL_SIZE,
        }

    def forward(self, ref, support, offsets, frames=()):
        """
        Args:
            ref (dict): ``{"feature": (B, C_in, H, W)}`` reference features.
            support (dict): empty: support frames contribute nothing.
            offsets (Tensor): (B, S) frame offsets (ignored).
            frames: the reference frames' metadata (ignored).

        Returns:
            Tensor: (B, M, H, W) ``ReLU(W * ref)``.
        """
        return F.relu(self.feature_conv(ref["feature"]))

    def output_shape(self) -> ShapeSpec:
        return self._shape
