"""One iterative stage of Sparse R-CNN's dynamic head (Sun et al., CVPR 2021, §3.3-3.4)."""

import math

import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from torch import nn

__all__ = ["DynamicInstanceInteraction", "SparseRCNNStage"]

# Sparse R-CNN's box deltas are (dx, dy, dw, dh) with these weights, as Cascade R-CNN's first
# stage; dw/dh are clamped so that one stage grows a box at most 1e5/16 times.
_BOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
_SCALE_CLAMP = math.log(1e5 / 16)


class DynamicInstanceInteraction(nn.Module):
    """
    The dynamic instance interactive head (§3.3): each proposal feature generates the parameters
    of two 1x1 convolutions (``dim -> dynamic_dim -> dim``, each followed by LayerNorm and ReLU)
    that filter its own RoI feature; the filtered S x S x dim feature is flattened and projected
    back to ``dim`` by a fully-connected layer (LayerNorm, ReLU).
    """

    def __init__(self, dim: int, *, dynamic_dim: int = 64, pooler_resolution: int = 7):
        """
        Args:
            dim: d, width of proposal and RoI features.
            dynamic_dim: width between the two dynamic convs (paper: 64).
            pooler_resolution: S, the RoI features' side.
        """
        super().__init__()
        self.dim = dim
        self.dynamic_dim = dynamic_dim
        self.dynamic_params = nn.Linear(dim, 2 * dim * dynamic_dim)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.out = nn.Linear(dim * pooler_resolution**2, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, proposal_features, roi_features):
        """
        Args:
            proposal_features (Tensor): (R, d) one feature per RoI.
            roi_features (Tensor): (R, d, S, S) RoI features.

        Returns:
            Tensor: (R, d) interaction features.
        """
        params = self.dynamic_params(proposal_features)
        split = self.dim * self.dynamic_dim
        conv1 = params[:, :split].view(-1, self.dim, self.dynamic_dim)
        conv2 = params[:, split:].view(-1, self.dynamic_dim, self.dim)
        x = roi_features.flatten(2).transpose(1, 2)  # (R, S*S, d)
        x = F.relu(self.norm1(torch.bmm(x, conv1)))
        x = F.relu(self.norm2(torch.bmm(x, conv2)))
        return F.relu(self.norm3(self.out(x.flatten(1))))


class SparseRCNNStage(nn.Module):
    """
    One stage of the iterative head, split in the three steps that SparseVOD's temporal head
    interleaves with its own modules:

    1. :meth:`attend`: multi-head self-attention among the N proposals of an image (residual,
       LayerNorm);
    2. :meth:`interact`: the dynamic instance interaction of each proposal feature with its RoI
       feature (residual, LayerNorm) gives the object features;
    3. :meth:`predict`: an FFN (residual, LayerNorm) refines them into the next stage's
       proposal features; a classification tower and a regression tower (Linear, LayerNorm,
       ReLU layers) end in the class logits (one sigmoid per class, for the focal loss) and
       box deltas applied to the stage's input boxes.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        *,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        dynamic_dim: int = 64,
        pooler_resolution: int = 7,
        num_cls_layers: int = 1,
        num_reg_layers: int = 3,
        prior_prob: float = 0.01,
    ):
        """
        Args:
            dim: d, width of proposal and RoI features.
            num_classes: K foreground classes (no background logit: sigmoid focal loss).
            num_heads: heads of the self-attention; must divide ``dim``.
            dim_feedforward: hidden width of the FFN.
            dropout: dropout after the attention, the interaction and in the FFN.
            dynamic_dim: width between the two dynamic convs.
            pooler_resolution: S, the RoI features' side.
            num_cls_layers: Linear-LayerNorm-ReLU layers before the class logits.
            num_reg_layers: Linear-LayerNorm-ReLU layers before the box deltas.
            prior_prob: initial probability of every class (focal loss prior, RetinaNet §4.1).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"MODEL.SPARSE_RCNN.NUM_HEADS={num_heads} must divide the FPN width ({dim})"
            )
        self.self_attention = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, batch_first=True
        )
        self.norm1 = nn.LayerNorm(dim)
        self.interaction = DynamicInstanceInteraction(
            dim, dynamic_dim=dynamic_dim, pooler_resolution=pooler_resolution
        )
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim_feedforward),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, dim),
        )
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.cls_tower = self._tower(dim, num_cls_layers)
        self.reg_tower = self._tower(dim, num_reg_layers)
        self.class_logits = nn.Linear(dim, num_classes)
        self.box_deltas = nn.Linear(dim, 4)
        self.box_transform = Box2BoxTransform(weights=_BOX_WEIGHTS, scale_clamp=_SCALE_CLAMP)
        self._init_parameters(prior_prob)

    def _init_parameters(self, prior_prob):
        # Sparse R-CNN: Xavier-uniform matrices; the class biases start every sigmoid at the
        # prior, so that the many background pairs do not swamp the focal loss at the start.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.class_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _tower(dim, num_layers):
        layers = []
        for _ in range(num_layers):
            layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    def attend(self, proposal_features):
        """
        Args:
            proposal_features (Tensor): (B, N, d).

        Returns:
            Tensor: (B, N, d) proposal features after self-attention within each image.
        """
        x = self.self_attention(proposal_features, proposal_features, proposal_features)[0]
        return self.norm1(proposal_features + self.dropout(x))

    def interact(self, proposal_features, roi_features):
        """
        Args:
            proposal_features (Tensor): (B, N, d) output of :meth:`attend`.
            roi_features (Tensor): (B * N, d, S, S) RoI features of the proposals, image-major.

        Returns:
            Tensor: (B, N, d) object features.
        """
        b, n, d = proposal_features.shape
        x = self.interaction(proposal_features.reshape(b * n, d), roi_features).view(b, n, d)
        return self.norm2(proposal_features + self.dropout(x))

    def predict(self, object_features, boxes):
        """
        Args:
            object_features (Tensor): (B, N, d).
            boxes (Tensor): (B, N, 4) the stage's input boxes (x0, y0, x1, y1), in pixels.

        Returns:
            Tensor: (B, N, K) class logits.
            Tensor: (B, N, 4) refined boxes (x0, y0, x1, y1), in pixels.
            Tensor: (B, N, d) proposal features of the next stage.
        """
        x = self.norm3(object_features + self.dropout(self.ffn(object_features)))
        logits = self.class_logits(self.cls_tower(x))
        deltas = self.box_deltas(self.reg_tower(x))
        refined = self.box_transform.apply_deltas(deltas.flatten(0, 1), boxes.flatten(0, 1))
        return logits, refined.view_as(boxes), x
