"""Learnable proposals of Sparse R-CNN (Sun et al., CVPR 2021, §3.1)."""

from typing import List, Tuple

import torch
from torch import nn
from torchvision.ops import box_convert

__all__ = ["LearnableProposals"]


class LearnableProposals(nn.Module):
    """
    N proposal boxes and N proposal features, learned as plain parameters and shared by every
    image: the boxes are normalised (cx, cy, w, h) in [0, 1] and start as the whole image (the
    paper's "Image" initialisation, as good as random or grid ones), the features (N, d) start
    at N(0, 1) (an ``nn.Embedding``'s initialisation).
    """

    def __init__(self, num_proposals: int, dim: int):
        """
        Args:
            num_proposals: N (paper: 100).
            dim: d, the width of a proposal feature (that of the FPN maps).
        """
        super().__init__()
        if num_proposals < 1:
            raise ValueError(f"MODEL.SPARSE_RCNN.NUM_PROPOSALS must be >= 1, got {num_proposals}")
        self.boxes = nn.Parameter(torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(num_proposals, 1))
        self.features = nn.Parameter(torch.randn(num_proposals, dim))

    @property
    def num_proposals(self) -> int:
        return self.boxes.shape[0]

    def forward(self, image_sizes: List[Tuple[int, int]]):
        """
        Args:
            image_sizes: (height, width) of each of the B images, without padding.

        Returns:
            Tensor: (B, N, 4) proposal boxes (x0, y0, x1, y1) in each image's pixels.
            Tensor: (B, N, d) proposal features (the same for every image).
        """
        # Filled, not made from a list: a constant made from data in a traced torch.cond branch
        # (an exported SparseVOD step's) breaks AOTInductor. The same values.
        whwh = torch.stack(
            [
                torch.stack([self.boxes.new_full((), w), self.boxes.new_full((), h)] * 2)
                for h, w in image_sizes
            ]
        )
        boxes = box_convert(self.boxes, "cxcywh", "xyxy")[None] * whwh[:, None]
        features = self.features[None].expand(len(image_sizes), -1, -1)
        return boxes, features
