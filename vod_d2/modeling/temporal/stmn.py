"""
STMN (Xiao & Lee, "Video Object Detection with an Aligned Spatial-Temporal Memory", ECCV 2018):
a convolutional recurrent memory (the STMM cell, Eq. 1-4, :mod:`.stmm`) run once forward and
once backward in time over a sequence of frames, each memory aligned to the next frame by
MatchTrans (§3.3) before it is used; the heads see each frame's two memories concatenated (§3.1).

Training sequence. A training sample is a reference frame and its support frames
(``INPUT.VIDEO.TRAIN_OFFSETS``, e.g. (-30, -20, -10, 10, 20, 30)): with the reference, the
paper's T = 7 sequence sampled 1 in 10 frames. With ``MODEL.STMN.PER_FRAME_LOSS`` (the paper:
"for each frame in a training sequence, we enforce a cross-entropy loss ... and a smooth L1
loss", §3.1) both memories run over the whole sequence and the module returns the memories of
every frame, which :class:`~vod_d2.modeling.meta_arch.VideoRCNN` gives a loss wherever the frame
has annotations. Without it, the loss is on the reference alone, the middle of the sequence: the
frame that sees the most context on both sides, as every test frame does.

Start. With ``MODEL.VIDEO.IDENTITY_INIT`` (:mod:`.gate`) ``U_z, U_r, U`` start at zero and the
concatenated memories pass through a residual gate, closed at the start, to each direction's
``ReLU(W * F_t)`` of the reference (:meth:`~.stmm.STMMCell.static_feature`): after the weight
transfer that is the static detector's own feature, so STMN starts as the detector it was
transferred from. The cell itself stays the paper's: its BN* gates make the memory of even one
frame ``z * ReLU(W * F)``, below the static feature wherever ``z < 1``, so without the gate no
initialisation of the cell gives back the static detector.

Test sequence. Every frame is detected with the memories of its own window
``MODEL.VIDEO.TEST_WINDOW`` at ``TEST_STRIDE`` (the authors' "centre" test mode), so the memory
never crosses into another window or video. :class:`~.stmn_stream.STMNTestStream` computes them
as the frames arrive, holding only what later windows need (the module is stateful at test
time and :meth:`STMNAggregation.reset` clears it at every video).
"""

import logging
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from fvcore.nn import weight_init

from .build import TEMPORAL_AGGREGATION_REGISTRY, TemporalAggregation
from .gate import GateSpec, maybe_gate
from .match_trans import build_match_trans
from .stmm import (
    CELLS,
    ConvGRUCell,
    SpatialTemporalMemory,
    STMMCell,
    bn_star,
    build_cell,
)
from .stmn_stream import STMNTestStream

__all__ = [
    "CELLS",
    "bn_star",
    "STMMCell",
    "ConvGRUCell",
    "SpatialTemporalMemory",
    "STMNAggregation",
    "STMNSingleFrameAggregation",
]

logger = logging.getLogger(__name__)

# Encodings of each direction's input projection, forward first.
_PROJECTIONS = ("forward_projection", "backward_projection")
# MODEL.STMN.TEST_CACHE_DTYPE -> the test stream's cache dtype (None: the features').
_CACHE_DTYPES = {"float32": None, "float16": torch.float16}


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

    In training, a frame's encodings (:meth:`encode`) are its backbone map ``"feature"``
    (MatchTrans reads it) and, for each direction, the memory-independent half of its cell step
    (``"forward_projection"``, ``"backward_projection"``); with ``per_frame_loss``,
    :meth:`forward` returns the memories of every frame of each sample's sequence. At test time
    (eval mode) the module streams each video through an :class:`STMNTestStream`: a frame's
    only encoding is the forward memory of its window, support frames contribute none
    (:attr:`support_keys` is empty) and :meth:`forward` adds the backward memory.
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
        dilation: int = 1,
        bn_star_k: float = 3.0,
        bidirectional: bool = True,
        matchtrans: bool = True,
        matchtrans_k: int = 2,
        matchtrans_normalization: str = "cosine",
        per_frame_loss: bool = True,
        test_window: Tuple[int, int] = (0, 0),
        test_stride: int = 1,
        test_cache_dtype: str = "float32",
        identity_init: bool = False,
        gate: GateSpec = GateSpec(),
    ):
        """
        Args:
            input_shape: shape of the backbone map (channels C_in, stride).
            memory_channels: channels M of each direction's memory (the paper: 512).
            cell: "STMM" (Eq. 1-4) or "ConvGRU" (ablation).
            kernel_size: kernel of ``W_z, W_r, W``.
            memory_kernel_size: kernel of ``U_z, U_r, U``.
            dilation: dilation of ``W_z, W_r, W`` (that of the convolution they replace).
            bn_star_k: ``k`` of BN* (the paper: 3).
            bidirectional: add the backward memory; False gives an online, forward-only model
                whose output has M channels.
            matchtrans: align the memory with MatchTrans before every use (§3.3).
            matchtrans_k: MatchTrans matches in a (2k+1)^2 window (the paper: k=2).
            matchtrans_normalization: "cosine" (the authors' code), "sum" (the paper's
                equation) or "softmax" (see :func:`~.match_trans.build_match_trans`).
            per_frame_loss: in training, return the memories of every frame of the sequence
                (for a loss on each) instead of the reference's only.
            test_window: (frames before, frames after) the reference at test time, as
                ``MODEL.VIDEO.TEST_WINDOW`` (the test stream advances the forward memories of
                the windows a frame is in as it arrives).
            test_stride: frame step between window members at test time.
            test_cache_dtype: "float32" or "float16", the dtype of the backward projections
                and forward memories the test stream holds until their frames are detected
                (:class:`~.stmn_stream.STMNTestStream`; "float16" holds about 35% less).
            identity_init: start as the static detector (``MODEL.VIDEO.IDENTITY_INIT``, see the
                module docstring).
            gate: the residual gate with ``identity_init`` (``MODEL.VIDEO.GATE``).
        """
        super().__init__(input_shape)
        if input_shape.channels is None:
            raise ValueError("STMNAggregation needs the channels of MODEL.VIDEO.IN_FEATURE")
        if min(test_window) < 0 or test_stride < 1:
            raise ValueError(
                f"MODEL.VIDEO.TEST_WINDOW must be two non-negative ints and TEST_STRIDE >= 1, "
                f"got {tuple(test_window)} and {test_stride}"
            )
        self.memory_channels = memory_channels
        self.per_frame_loss = per_frame_loss
        self.test_window = tuple(test_window)
        self.test_stride = test_stride
        if test_cache_dtype not in _CACHE_DTYPES:
            raise ValueError(
                f"MODEL.STMN.TEST_CACHE_DTYPE must be one of {tuple(_CACHE_DTYPES)}, got "
                f"{test_cache_dtype!r}"
            )
        self.test_cache_dtype = _CACHE_DTYPES[test_cache_dtype]

        def direction():
            aligner = build_match_trans(matchtrans_k, matchtrans_normalization)
            return SpatialTemporalMemory(
                build_cell(
                    cell,
                    input_shape.channels,
                    memory_channels,
                    kernel_size,
                    memory_kernel_size,
                    bn_star_k,
                    dilation,
                    zero_memory_convs=identity_init,
                ),
                aligner if matchtrans else None,
            )

        self.forward_memory = direction()
        self.backward_memory = direction() if bidirectional else None
        self.residual_gate = maybe_gate(identity_init, self.output_shape().channels, gate)
        self._training_keys = ("feature",) + tuple(_PROJECTIONS[: len(self._directions)])
        self._stream = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        stmn = cfg.MODEL.STMN
        if cfg.INPUT.VIDEO.TRAIN_SAMPLING == "none":
            logger.warning(
                "STMNAggregation with INPUT.VIDEO.TRAIN_SAMPLING 'none': every training sample "
                "is a one-frame sequence, so STMN trains without temporal support (its memories "
                "see the reference alone); the STMN configs use 'fixed' with "
                "INPUT.VIDEO.TRAIN_OFFSETS"
            )
        return {
            "input_shape": input_shape,
            "memory_channels": stmn.MEMORY_CHANNELS,
            "cell": stmn.CELL,
            "kernel_size": stmn.KERNEL_SIZE,
            "memory_kernel_size": stmn.MEMORY_KERNEL_SIZE,
            "dilation": stmn.DILATION,
            "bn_star_k": stmn.BN_STAR_K,
            "bidirectional": stmn.BIDIRECTIONAL,
            "matchtrans": stmn.MATCHTRANS.ENABLED,
            "matchtrans_k": stmn.MATCHTRANS.K,
            "matchtrans_normalization": stmn.MATCHTRANS.NORMALIZATION,
            "per_frame_loss": stmn.PER_FRAME_LOSS,
            "test_window": tuple(cfg.MODEL.VIDEO.TEST_WINDOW),
            "test_stride": cfg.MODEL.VIDEO.TEST_STRIDE,
            "test_cache_dtype": stmn.TEST_CACHE_DTYPE,
            "identity_init": cfg.MODEL.VIDEO.IDENTITY_INIT,
            "gate": GateSpec.from_config(cfg),
        }

    @property
    def support_keys(self) -> Tuple[str, ...]:
        """Training: the features and projections; test: none (the stream holds its own)."""
        return self._training_keys if self.training else ()

    @property
    def _directions(self) -> List[SpatialTemporalMemory]:
        return [m for m in (self.forward_memory, self.backward_memory) if m is not None]

    def reset(self):
        """Start a new test video: a fresh :class:`STMNTestStream`."""
        self._stream = STMNTestStream(
            self.forward_memory,
            self.backward_memory,
            self.test_window[0],
            self.test_stride,
            self.test_cache_dtype,
        )

    def train(self, mode: bool = True):
        """Also drop the last test video's stream (e.g. back to training after an evaluation)."""
        self._stream = None
        return super().train(mode)

    def encode(self, feature: torch.Tensor, frames=()) -> Dict[str, torch.Tensor]:
        """
        In training, the per-frame part of STMN: a frame's features and, for each direction,
        the memory-independent half of Eq. 1-3 (``[W_z * F, W_r * F, W * F]``), computed once
        per frame of the batch. At test time, the next frame of the video enters the stream.

        Args:
            feature (Tensor): (N, C_in, H, W) backbone features (N = 1 at test time).
            frames: the frames' metadata (at test time, the frame's index in its video).

        Returns:
            dict: training: ``"feature"`` (N, C_in, H, W) and ``"forward_projection"`` (and
            ``"backward_projection"`` when bidirectional), each (N, 3 M, H, W); test:
            ``"forward_memory"`` (1, M, H, W), the forward memory of the frame's window, and,
            with the residual gate, ``"static"`` (1, C_out, H, W), the frame's static features.
        """
        if feature.dim() != 4 or feature.shape[1] != self.input_shape.channels:
            raise ValueError(
                f"STMNAggregation was built for {self.input_shape.channels}-channel features "
                f"(MODEL.VIDEO.IN_FEATURE), got {tuple(feature.shape)}"
            )
        if not self.training:
            if self._stream is None or len(frames) != 1:
                raise RuntimeError(
                    "STMNAggregation in eval mode streams a video one frame at a time: reset() "
                    f"it at every video and encode one frame with its FrameInfo, got {len(frames)}"
                )
            encoded = {"forward_memory": self._stream.push(frames[0].index, feature)}
            if self.residual_gate is not None:
                encoded["static"] = torch.cat(
                    [d.cell.static_feature_of(feature) for d in self._directions], dim=1
                )
            return encoded
        encoded = {"feature": feature}
        for name, direction in zip(_PROJECTIONS, self._directions):
            encoded[name] = direction.cell.project(feature)
        return encoded

    def forward(self, ref, support, offsets, frames=()):
        """
        Args:
            ref (dict): :meth:`encode` of B reference frames, each (B, ...).
            support (dict): the :attr:`support_keys` encodings of their S support frames, each
                (B, S, ...).
            offsets (Tensor): (B, S) int frame offsets ``support - reference`` (their signs and
                order give the temporal order).
            frames: the reference frames' metadata (at test time, the frame's index).

        Returns:
            Tensor: the forward memory (B, M, H, W), or forward and backward memories
            concatenated (B, 2 M, H, W), of each reference; in training with
            ``per_frame_loss``, (B, 1 + S, C, H, W) those of every frame of each sample,
            the reference first, then its support frames in their order (repeated frames get
            the same memories).
        """
        if not self.training:
            if offsets.shape[0] != 1 or len(frames) != 1:
                raise ValueError(f"STMN detects one test frame at a time, got {len(frames)}")
            index = frames[0].index
            window = [index + o for o in offsets[0].tolist()]
            memories = self._stream.memories(index, ref["forward_memory"], window)
            return self._gated(ref.get("static"), memories)
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
        ``rows`` are their offsets, which locate each offset's frame in ``support`` (training).
        """
        device = ref["feature"].device
        samples = torch.arange(len(rows), device=device)

        def column(key, offset):
            """(N, ...) encodings ``key`` of the frame at ``offset`` of each sample (0: ref)."""
            if offset == 0:
                return ref[key]
            index = torch.as_tensor([row.index(offset) for row in rows], device=device)
            return support[key][samples, index]

        def sequence(key, offsets):
            return torch.stack([column(key, o) for o in offsets], dim=1)

        def static(offsets):
            """The static features of the frames at ``offsets``, (N, len, C_out, H, W)."""
            return torch.cat(
                [
                    d.cell.static_feature(sequence(name, offsets))
                    for d, name in zip(self._directions, _PROJECTIONS)
                ],
                dim=2,
            )

        past = [o for o in window if o < 0]
        future = [o for o in window if o > 0]
        if not self.per_frame_loss:
            memories = [
                direction(sequence("feature", offsets), sequence(name, offsets))
                for direction, name, offsets in zip(
                    self._directions, _PROJECTIONS, (past + [0], future[::-1] + [0])
                )
            ]
            gated = self.residual_gate is not None
            return self._gated(static([0])[:, 0] if gated else None, torch.cat(memories, dim=1))
        # Both memories over the whole sequence, each frame's after its own step (§3.1).
        order = past + [0] + future
        memories = [
            self.forward_memory(
                sequence("feature", order), sequence("forward_projection", order), True
            )
        ]
        if self.backward_memory is not None:
            backward = order[::-1]
            steps = self.backward_memory(
                sequence("feature", backward), sequence("backward_projection", backward), True
            )
            memories.append(steps.flip(1))
        per_offset = torch.cat(memories, dim=2)
        if self.residual_gate is not None:
            per_offset = self.residual_gate(static(order), per_offset)
        positions = torch.as_tensor([[order.index(o) for o in [0] + row] for row in rows])
        return per_offset[samples[:, None], positions.to(device)]

    def _gated(self, static, memories: torch.Tensor) -> torch.Tensor:
        """``memories`` through the residual gate to ``static`` (both (B, C_out, H, W)), if any."""
        if self.residual_gate is None:
            return memories
        return self.residual_gate(static, memories)

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
    (``configs/stmn_R101_DC5_static.yaml``), then
    :mod:`vod_d2.modeling.temporal.weight_transfer` copies ``feature_conv`` into ``W_z, W_r, W``
    of both STMN directions and widens the heads to the two concatenated memories. (R-FCN has
    that convolution, its feature reduction, which converts the same way.)
    """

    support_keys = ()

    @configurable
    def __init__(
        self,
        *,
        input_shape: ShapeSpec,
        memory_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
    ):
        """
        Args:
            input_shape: shape of the backbone map (channels C_in, stride).
            memory_channels: output channels M (those of the STMN memory it initialises).
            kernel_size: kernel of the convolution (STMN's ``KERNEL_SIZE``).
            dilation: its dilation (STMN's ``DILATION``).
        """
        super().__init__(input_shape)
        self._shape = ShapeSpec(channels=memory_channels, stride=input_shape.stride)
        self.feature_conv = Conv2d(
            input_shape.channels,
            memory_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
        )
        weight_init.c2_msra_fill(self.feature_conv)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "memory_channels": cfg.MODEL.STMN.MEMORY_CHANNELS,
            "kernel_size": cfg.MODEL.STMN.KERNEL_SIZE,
            "dilation": cfg.MODEL.STMN.DILATION,
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
