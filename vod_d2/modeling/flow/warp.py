"""
Flow-guided feature warping ``W(f, M)`` of Deep Feature Flow and Impression Network (§3.3):
bilinear sampling of a reference frame's feature at the positions the flow points to, done by
``torch.nn.functional.grid_sample``.
"""

import torch
import torch.nn.functional as F

__all__ = ["warp"]


def _exact_extent(size: int) -> int:
    """Smallest ``2**k + 1 >= size`` (at least 2): an extent whose ``extent - 1`` is a power of
    two, so that normalising integer coordinates by it is exact in floating point."""
    # A loop rather than int.bit_length, which TorchDynamo folds to 0 (it traces the branches
    # of the torch.cond that an exported key-frame step runs this in).
    extent = 2
    while extent < size:
        extent = 2 * extent - 1
    return extent


def warp(feature: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """
    Backward warping, bilinearly interpolated, positions outside the map reading zeros::

        out[n, :, y, x] = feature[n, :, y + flow[n, 1, y, x], x + flow[n, 0, y, x]]


    This is DFF's ``GridGenerator(transform_type="warp")`` + ``BilinearSampler`` (the flow comes
    from ``F(I_cur, I_ref)`` and brings the reference's feature to the current frame). Both of
    its conventions are kept: pixel centres sit at integer coordinates (``align_corners=True``:
    normalised -1 and 1 are the centres of the corner pixels, so a flow of u moves by exactly u
    pixels), and each out-of-map corner of the bilinear stencil contributes zero
    (``padding_mode="zeros"``).

    The map is zero-padded on the right and bottom to an extent ``2**k + 1`` before sampling,
    which changes no value (the padding is the zeros the sampler would read there anyway) but
    makes grid_sample's normalise/unnormalise round trip exact: with a normaliser ``W - 1`` that
    is not a power of two, an integer position comes back as ``x - 1e-7`` and blends in its
    neighbour. So a zero flow copies the feature bit for bit, and an integer flow shifts it
    exactly.

    Args:
        feature (Tensor): (N, C, H, W) feature of the reference frame.
        flow (Tensor): (N, 2, H, W) displacement, in pixels of this map, from each position of
            the current frame to its match in the reference frame; channel 0 is x (along W),
            channel 1 is y (along H).

    Returns:
        Tensor: (N, C, H, W) the reference feature aligned to the current frame.
    """
    if feature.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"warp needs a (N, C, H, W) feature and a (N, 2, H, W) flow, got feature "
            f"{tuple(feature.shape)} and flow {tuple(flow.shape)}"
        )
    n, _, h, w = feature.shape
    if flow.shape[0] != n or flow.shape[2:] != feature.shape[2:]:
        raise ValueError(
            f"warp: the flow {tuple(flow.shape)} must match the feature {tuple(feature.shape)} in "
            f"batch size and spatial size (the flow is at the feature's stride)"
        )
    ext_h, ext_w = _exact_extent(h), _exact_extent(w)
    padded = F.pad(feature, (0, ext_w - w, 0, ext_h - h))
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    grid = torch.stack(
        [
            (xs + flow[:, 0]) * (2.0 / (ext_w - 1)) - 1.0,
            (ys + flow[:, 1]) * (2.0 / (ext_h - 1)) - 1.0,
        ],
        dim=-1,
    )
    return F.grid_sample(
        padded, grid.to(feature.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
    )
