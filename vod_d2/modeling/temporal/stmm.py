"""
The recurrent parts of STMN (Xiao & Lee, ECCV 2018): BN* (§3.2), the STMM cell (Eq. 1-4), its
ConvGRU ablation, and one direction of memory run over a sequence of frames with MatchTrans
alignment (§3.3). :mod:`vod_d2.modeling.temporal.stmn` assembles them into the bidirectional
aggregation module.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from fvcore.nn import weight_init
from torch import nn

__all__ = ["CELLS", "bn_star", "STMMCell", "ConvGRUCell", "SpatialTemporalMemory", "build_cell"]

CELLS = ("STMM", "ConvGRU")


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
        dilation: int = 1,
        zero_memory_convs: bool = False,
    ):
        """
        Args:
            in_channels: channels of the frame features F_t.
            memory_channels: channels of the memory M_t.
            kernel_size: kernel of ``W_z, W_r, W`` (odd; "same" padding).
            memory_kernel_size: kernel of ``U_z, U_r, U`` (odd; "same" padding).
            bn_star_k: ``k`` of :func:`bn_star`.
            dilation: dilation of ``W_z, W_r, W``, that of the convolution they replace (R-FCN's
                feature reduction: 6); ``U_z, U_r, U`` are not dilated.
            zero_memory_convs: start ``U_z, U_r, U`` at zero, so that the memory starts as a
                gated running average of the frames' ``ReLU(W * F)`` (what the heads of the
                static detector read, after the weight transfer); False: MSRA (random).
        """
        super().__init__()
        for name, size in [
            ("kernel_size", kernel_size),
            ("memory_kernel_size", memory_kernel_size),
        ]:
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {size}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.memory_channels = memory_channels
        self.bn_star_k = bn_star_k
        self.input_conv = Conv2d(
            in_channels,
            3 * memory_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
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
        if zero_memory_convs:
            nn.init.zeros_(self.gate_conv.weight)
            nn.init.zeros_(self.candidate_conv.weight)

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

    def static_feature(self, projected: torch.Tensor) -> torch.Tensor:
        """
        What the cell reads of a frame alone, its candidate without memory, ``act(W * F)``: the
        static detector's feature once ``W`` is transferred from it (:mod:`.weight_transfer`).

        Args:
            projected (Tensor): (..., 3 * M, H, W) :meth:`project` of the frames.

        Returns:
            Tensor: (..., M, H, W).
        """
        return self.candidate_activation(projected.chunk(3, dim=-3)[2])

    def static_feature_of(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`static_feature` of (N, C_in, H, W) frame features, computing only ``W * F``."""
        conv, m = self.input_conv, self.memory_channels
        bias = conv.bias[2 * m :] if conv.bias is not None else None
        w = F.conv2d(features, conv.weight[2 * m :], bias, conv.stride, conv.padding, conv.dilation)
        return self.candidate_activation(w)

    def forward(self, projected: torch.Tensor, memory: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            projected (Tensor): (N, 3 * M, H, W) :meth:`project` of the current frame.
            memory (Tensor or None): (N, M, H, W) aligned previous memory M'_{t-1}; None for
                the first frame of a sequence, where the memory is zero (same result as a zero
                tensor, without the U convolutions).

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

    In training the first step reads an explicit zero memory (M_0 = 0) through the whole cell,
    so that ``U_z, U_r, U`` take part in every iteration, one-frame sequences (DET images,
    references at a video's border) included: DistributedDataParallel without
    ``find_unused_parameters`` needs every parameter in every backward pass. The result is the
    same as the cell's shortcut for a missing memory, which inference keeps (it skips two
    convolutions of zeros).
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

    def forward(
        self, features: torch.Tensor, projected: torch.Tensor, every_step: bool = False
    ) -> torch.Tensor:
        """
        Args:
            features (Tensor): (N, T, C_in, H, W) frame features, in the order this memory
                visits them (T >= 1); the memory starts at zero before the first.
            projected (Tensor): (N, T, 3 M, H, W) the cell's :meth:`STMMCell.project` of them.
            every_step: return the memory after every frame, not only after the last.

        Returns:
            Tensor: (N, M, H, W) the memory after the last frame, or (N, T, M, H, W) after
            each frame with ``every_step``.
        """
        memory = None
        if self.training:
            n, _, _, h, w = projected.shape
            memory = projected.new_zeros((n, self.cell.memory_channels, h, w))
        memories = []
        for step in range(features.shape[1]):
            if step > 0 and self.aligner is not None:
                memory = self.aligner(features[:, step], features[:, step - 1], memory)
            memory = self.cell(projected[:, step], memory)
            memories.append(memory)
        return torch.stack(memories, dim=1) if every_step else memory


def build_cell(
    cell: str,
    in_channels: int,
    memory_channels: int,
    kernel_size: int,
    memory_kernel_size: int,
    bn_star_k: float,
    dilation: int = 1,
    zero_memory_convs: bool = False,
) -> STMMCell:
    """The cell named by ``MODEL.STMN.CELL`` ("STMM" or "ConvGRU")."""
    if cell not in CELLS:
        raise ValueError(f"MODEL.STMN.CELL={cell!r} is not one of {CELLS}")
    cls = STMMCell if cell == "STMM" else ConvGRUCell
    return cls(
        in_channels,
        memory_channels,
        kernel_size,
        memory_kernel_size,
        bn_star_k,
        dilation,
        zero_memory_convs,
    )
