"""The compiled ops under torch.compile (fullgraph) and torch.export, and their fake kernels."""

import pytest
import torch
import torchvision
from _testing import requires_extension
from torch import nn

from vod_d2.layers import (
    DeformableSimilaritySampling,
    DeformPSRoIPool,
    MatchTransAlign,
    TemporalRoIAlign,
)

pytestmark = requires_extension


class AllOps(nn.Module):
    """A small module that runs each of the four ops once (with learnable offsets)."""

    def __init__(self):
        super().__init__()
        self.sampling = DeformableSimilaritySampling(num_points=4)
        self.match_trans = MatchTransAlign(k=1, normalization="softmax")
        self.temporal = TemporalRoIAlign(k=3)
        self.ps_pool = DeformPSRoIPool(output_size=2, spatial_scale=0.5, sampling_ratio=-1)
        self.ps_offsets = nn.Linear(4, 8)

    def forward(self, features, support, rois):
        """features (1, 4, 6, 7), support (1, 2, 4, 6, 7), rois (R, 5) on a 12 x 14 image."""
        aligned = self.match_trans(features, support[:, 0], support[:, 1])
        sampled = self.sampling(features, support[:, 0], aligned)
        pooled = torchvision.ops.roi_align(sampled, rois, 2, 0.5, aligned=True)  # (R, C, 2, 2)
        index = rois[:, 0].long()
        temporal = self.temporal(pooled, support, index)  # (R, T, C, 2, 2)
        offsets = self.ps_offsets(pooled.mean(dim=(2, 3))).view(-1, 2, 2, 2)
        return self.ps_pool(temporal.flatten(1, 2), rois, offsets)  # T * C = 8 = 2 * 2 * 2


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 4, 6, 7, generator=g)
    support = torch.randn(1, 2, 4, 6, 7, generator=g)
    rois = torch.tensor(
        [[0, 0.0, 0.0, 6.0, 8.0], [0, 4.0, 2.0, 11.0, 9.0], [0, 2.0, 6.0, 9.0, 10.0]]
    )
    return features, support, rois


def _forward_backward(module, features, support, rois):
    features = features.clone().requires_grad_()
    support = support.clone().requires_grad_()
    module.zero_grad()
    out = module(features, support, rois)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    grads = [features.grad, support.grad] + [p.grad.clone() for p in module.parameters()]
    return out.detach(), grads


def test_compile_fullgraph_matches_eager():
    # aot_eager traces the ops through their fake kernels and the autograd Functions, as
    # inductor does, without compiling C++ (one inductor compile takes ~50 s on one core here).
    torch.manual_seed(0)
    module = AllOps()
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for seed in (0, 1):  # the second call reuses the graph
        inputs = _inputs(seed)
        out, grads = _forward_backward(module, *inputs)
        compiled_out, compiled_grads = _forward_backward(compiled, *inputs)
        torch.testing.assert_close(compiled_out, out, msg=f"output, seed {seed}")
        for i, (got, expected) in enumerate(zip(compiled_grads, grads)):
            assert expected.abs().sum() > 0, i
            torch.testing.assert_close(got, expected, msg=f"gradient {i}, seed {seed}")


def test_export_matches_eager():
    torch.manual_seed(0)
    module = AllOps().eval()
    inputs = _inputs()
    exported = torch.export.export(module, inputs)
    called = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    for op in (
        "deform_similarity_forward",
        "deform_aggregate_forward",
        "local_correlation_forward",
        "local_aggregate_forward",
        "temporal_roi_align_forward",
        "deform_ps_roi_pool_forward",
    ):
        assert f"vod_d2.{op}.default" in called, (op, called)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*inputs), module(*inputs))


def _op_cases():
    """(op, args) for every forward and backward op, on small inputs."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    x, y = rand(2, 3, 4, 5), rand(2, 3, 4, 5)
    shared, per_position = rand(4, 2), rand(2, 8, 4, 5)
    similarity = rand(2, 4, 4, 5)
    rois, support = rand(3, 3, 2, 2), rand(2, 2, 3, 4, 5)
    index = torch.tensor([1, 0, 1])
    _, topk_sim, topk_index = torch.ops.vod_d2.temporal_roi_align_forward(rois, support, index, 3)
    maps, boxes = rand(2, 8, 6, 7), torch.tensor(
        [[0, 1.0, 2.0, 9.0, 11.0], [1, 0.0, 0.0, 5.0, 3.0]]
    )
    ps_offsets = rand(2, 2, 2, 2)
    ops = torch.ops.vod_d2
    return [
        (ops.deform_similarity_forward, (x, y, shared)),
        (ops.deform_similarity_forward, (x, y, per_position)),
        (ops.deform_similarity_backward, (similarity, x, y, shared)),
        (ops.deform_aggregate_forward, (similarity, y, per_position)),
        (ops.deform_aggregate_backward, (x, similarity, y, shared)),
        (ops.deform_similarity_forward, (x.half(), y.half(), shared)),  # float32 offsets
        (ops.local_correlation_forward, (x, y, 1)),
        (ops.local_correlation_backward, (rand(2, 9, 4, 5), x, y, 1)),
        (ops.local_aggregate_forward, (rand(2, 9, 4, 5), y, 1)),
        (ops.local_aggregate_backward, (x, rand(2, 9, 4, 5), y, 1)),
        (ops.temporal_roi_align_forward, (rois, support, index, 3)),
        (ops.temporal_roi_align_forward, (rois.double(), support.double(), index, 3)),
        (
            ops.temporal_roi_align_backward,
            (rand(3, 2, 3, 2, 2), rois, support, index, topk_sim, topk_index),
        ),
        (ops.deform_ps_roi_pool_forward, (maps, boxes, ps_offsets, 0.5, 2, -1, 0.1)),
        (ops.deform_ps_roi_pool_forward, (maps, boxes, None, 0.5, 2, 2, 0.1)),
        (
            ops.deform_ps_roi_pool_backward,
            (rand(2, 2, 2, 2), maps, boxes, ps_offsets, 0.5, 2, -1, 0.1),
        ),
    ]


@pytest.mark.parametrize("op, args", _op_cases(), ids=lambda v: getattr(v, "__name__", ""))
def test_fake_kernels(op, args):
    # The fake kernel gives the real kernel's shapes, dtypes and strides (torch.library.opcheck).
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
