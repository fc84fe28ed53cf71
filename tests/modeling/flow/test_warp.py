import pytest
import torch

from vod_d2.modeling.flow import warp

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


def _flow(n, h, w, dx, dy, dtype=torch.float32, device="cpu"):
    flow = torch.empty(n, 2, h, w, dtype=dtype, device=device)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


@pytest.mark.parametrize("device", DEVICES)
def test_zero_flow_is_the_identity_exactly(device):
    g = torch.Generator().manual_seed(0)
    # Sizes whose W - 1 is and is not a power of two, degenerate 1- and 2-pixel maps included.
    for h, w in [(1, 1), (1, 5), (2, 2), (3, 7), (5, 8), (9, 12), (38, 63), (17, 100)]:
        for dtype in (torch.float32, torch.float64):
            feature = torch.randn(2, 3, h, w, generator=g, dtype=dtype).to(device)
            out = warp(feature, torch.zeros(2, 2, h, w, dtype=dtype, device=device))
            assert out.dtype == dtype
            assert torch.equal(out, feature), (h, w, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_integer_flow_shifts_by_that_many_pixels(device):
    # f[y, x] = 10 y + x on a 3 x 4 map.
    feature = (10 * torch.arange(3.0)[:, None] + torch.arange(4.0))[None, None].to(device)
    # flow (+1, 0): out[y, x] = f[y, x + 1]; the last column reads outside the map: 0.
    expected = torch.tensor([[1.0, 2, 3, 0], [11, 12, 13, 0], [21, 22, 23, 0]], device=device)
    assert torch.equal(warp(feature, _flow(1, 3, 4, 1.0, 0.0, device=device))[0, 0], expected)
    # flow (-2, +1): out[y, x] = f[y + 1, x - 2]; first two columns and the last row: 0.
    expected = torch.tensor([[0.0, 0, 10, 11], [0, 0, 20, 21], [0, 0, 0, 0]], device=device)
    assert torch.equal(warp(feature, _flow(1, 3, 4, -2.0, 1.0, device=device))[0, 0], expected)
    # A per-pixel flow: only position (1, 2) moves, by (0, -1): it reads f[0, 2] = 2.
    flow = torch.zeros(1, 2, 3, 4, device=device)
    flow[0, 1, 1, 2] = -1.0
    expected = feature[0, 0].clone()
    expected[1, 2] = 2.0
    assert torch.equal(warp(feature, flow)[0, 0], expected)


def test_half_pixel_flow_interpolates_and_reads_zeros_past_the_border():
    feature = (10 * torch.arange(3.0)[:, None] + torch.arange(4.0))[None, None]
    # flow (+0.5, 0): the mean of f[y, x] and f[y, x + 1]; past the last column DFF's sampler
    # (and padding_mode="zeros") reads 0, so the last column is f[y, 3] / 2.
    expected = torch.tensor(
        [[0.5, 1.5, 2.5, 1.5], [10.5, 11.5, 12.5, 6.5], [20.5, 21.5, 22.5, 11.5]]
    )
    torch.testing.assert_close(warp(feature, _flow(1, 3, 4, 0.5, 0.0))[0, 0], expected)


def test_gradients_flow_into_the_flow_and_the_feature():
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    # Fractional displacements away from integers, where bilinear sampling is differentiable.
    flow = (torch.randint(-2, 3, (2, 2, 5, 6), generator=g) + 0.2).double()
    flow = (flow + 0.6 * torch.rand(2, 2, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(warp, (feature, flow))
    # Hand-worked: on the ramp f[y, x] = x, an interior sample at x + u is x + u, so
    # d out / d u = 1 and d out / d v = 0.
    ramp = torch.arange(8.0, dtype=torch.float64).expand(1, 1, 4, 8)
    flow = _flow(1, 4, 8, 0.25, 0.25, torch.float64).requires_grad_()
    out = warp(ramp, flow)
    out[..., :3, :7].sum().backward()
    expected_u = torch.zeros(4, 8, dtype=torch.float64)
    expected_u[:3, :7] = 1.0
    torch.testing.assert_close(flow.grad[0, 0], expected_u)
    torch.testing.assert_close(flow.grad[0, 1], torch.zeros(4, 8, dtype=torch.float64))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="spatial size"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="batch size"):
        warp(torch.zeros(2, 3, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\) flow"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
