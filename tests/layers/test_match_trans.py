import logging

import pytest
import torch
from _testing import requires_cuda, requires_extension

from vod_d2.layers import (
    MatchTransAlign,
    _ext,
    local_aggregate,
    local_aggregate_reference,
    local_correlation,
    local_correlation_reference,
)
from vod_d2.layers.match_trans import window_inside_mask


def _rand(*shape, device="cpu", dtype=torch.float64, contiguous=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        return torch.randn(shape, generator=g, dtype=dtype).to(device)
    n, c, h, w = shape
    return torch.randn(n, h, w, c, generator=g, dtype=dtype).permute(0, 3, 1, 2).to(device)


def _grads(fn, tensors, seed=1):
    tensors = [t.detach().requires_grad_() for t in tensors]
    out = fn(*tensors)
    weight = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype
    ).to(out.device)
    (out * weight).sum().backward()
    return out.detach(), [t.grad for t in tensors]


# (k, H, W): windows inside the map, wider than the map, and k = 0.
SHAPES = ((0, 3, 4), (1, 5, 6), (2, 4, 7), (2, 2, 3), (3, 3, 1))


def check_parity(device):
    for k, h, w in SHAPES:
        for contiguous in (True, False):
            a = _rand(2, 3, h, w, device=device, contiguous=contiguous, seed=1)
            b = _rand(2, 3, h, w, device=device, contiguous=contiguous, seed=2)
            weights = _rand(2, (2 * k + 1) ** 2, h, w, device=device, contiguous=contiguous, seed=3)
            m = _rand(2, 5, h, w, device=device, contiguous=contiguous, seed=4)
            case = f"k={k} {h}x{w} contiguous={contiguous}"
            for op, ref, inputs in (
                (local_correlation, local_correlation_reference, (a, b)),
                (local_aggregate, local_aggregate_reference, (weights, m)),
            ):
                out, grads = _grads(lambda x, y: op(x, y, k), inputs)
                expected, expected_grads = _grads(lambda x, y: ref(x, y, k), inputs)
                torch.testing.assert_close(out, expected, msg=f"{op.__name__} {case}")
                for grad, expected_grad in zip(grads, expected_grads):
                    torch.testing.assert_close(grad, expected_grad, msg=f"{op.__name__} {case}")


@requires_extension
def test_parity_cpu():
    check_parity("cpu")


@requires_cuda
def test_parity_cuda():
    check_parity("cuda")


def check_gradcheck(correlation, aggregate, device):
    for k, h, w in ((1, 3, 4), (2, 2, 3)):
        a, b = (_rand(1, 2, h, w, device=device, seed=s).requires_grad_() for s in (1, 2))
        weights = _rand(1, (2 * k + 1) ** 2, h, w, device=device, seed=3).requires_grad_()
        m = _rand(1, 2, h, w, device=device, seed=4).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, y: correlation(x, y, k), (a, b)), k
        assert torch.autograd.gradcheck(lambda x, y: aggregate(x, y, k), (weights, m)), k


@requires_extension
def test_gradcheck_kernel_cpu():
    check_gradcheck(local_correlation, local_aggregate, "cpu")


@requires_cuda
def test_gradcheck_kernel_cuda():
    check_gradcheck(local_correlation, local_aggregate, "cuda")


def test_gradcheck_reference():
    check_gradcheck(local_correlation_reference, local_aggregate_reference, "cpu")


def check_hand_derived(correlation, aggregate, device):
    k, h, w = 1, 3, 4
    ones = torch.ones(1, 1, h, w, dtype=torch.float64, device=device)
    # All-ones maps correlate to 1 where the displaced cell is inside the map, 0 outside.
    expected = window_inside_mask(h, w, k, device=device).to(ones.dtype)
    assert torch.equal(correlation(ones, ones, k), expected)
    # A one-hot window weight at displacement (dy, dx) copies m(y + dy, x + dx).
    m = _rand(1, 2, h, w, device=device)
    for d, (dy, dx) in enumerate([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]):
        weights = torch.zeros(1, 9, h, w, dtype=m.dtype, device=device)
        weights[:, d] = 1
        out = aggregate(weights, m, k)
        for y in range(h):
            for x in range(w):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                cell = m[0, :, y + dy, x + dx] if inside else torch.zeros_like(m[0, :, 0, 0])
                assert torch.equal(out[0, :, y, x], cell), (dy, dx, y, x)


@requires_extension
def test_hand_derived_kernel_cpu():
    check_hand_derived(local_correlation, local_aggregate, "cpu")


@requires_cuda
def test_hand_derived_kernel_cuda():
    check_hand_derived(local_correlation, local_aggregate, "cuda")


def test_hand_derived_reference():
    check_hand_derived(local_correlation_reference, local_aggregate_reference, "cpu")


def _position_code(h, w, scale=1.0):
    """(1, H W, H, W): a one-hot code of each position, so only equal positions correlate."""
    return scale * torch.eye(h * w, dtype=torch.float64).view(1, h * w, h, w)


def check_align(device):
    h, w = 4, 5
    memory = _rand(1, 3, h, w, device=device)
    for normalization, scale in (("sum", 1.0), ("softmax", 30.0)):
        align = MatchTransAlign(k=2, normalization=normalization, eps=1e-12)
        code = _position_code(h, w, scale).to(device)
        # Identical frames: Gamma peaks at the zero displacement, the memory stays in place.
        torch.testing.assert_close(align(code, code, memory), memory, msg=normalization)
        gamma = align.transform_coefficients(code, _rand(1, h * w, h, w, device=device).abs())
        torch.testing.assert_close(gamma.sum(dim=1), torch.ones_like(gamma[:, 0]))
        # The content moved one row up and one column left between t-1 and t: what is at (y, x)
        # now was at (y + 1, x + 1), so the aligned memory reads M_{t-1}(y + 1, x + 1).
        prev = torch.zeros_like(code)
        prev[:, :, 1:, 1:] = code[:, :, :-1, :-1]
        aligned = align(code, prev, memory)
        torch.testing.assert_close(aligned[:, :, :-1, :-1], memory[:, :, 1:, 1:], msg=normalization)


@requires_extension
def test_align_cpu():
    check_align("cpu")


@requires_cuda
def test_align_cuda():
    check_align("cuda")


def test_align_reference(without_extension):
    check_align("cpu")


def test_softmax_ignores_outside_cells():
    # Softmax weights of displacements leaving the map are exactly 0.
    align = MatchTransAlign(k=1, normalization="softmax")
    a, b = _rand(1, 2, 3, 3, seed=1), _rand(1, 2, 3, 3, seed=2)
    gamma = align.transform_coefficients(a, b)
    inside = window_inside_mask(3, 3, 1)
    assert torch.all(gamma[~inside.expand_as(gamma)] == 0)
    assert torch.all(gamma[inside.expand_as(gamma)] > 0)


def check_low_precision(device):
    a, b, m = (_rand(1, 4, 5, 6, device=device, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    weights = _rand(1, 25, 5, 6, device=device, dtype=torch.float32, seed=4)
    for dtype in (torch.float16, torch.bfloat16):
        torch.testing.assert_close(
            local_correlation(a.to(dtype), b.to(dtype), 2).float(),
            local_correlation_reference(a, b, 2),
            atol=0.1,
            rtol=0.05,
        )
        torch.testing.assert_close(
            local_aggregate(weights.to(dtype), m.to(dtype), 2).float(),
            local_aggregate_reference(weights, m, 2),
            atol=0.1,
            rtol=0.05,
        )


@requires_extension
def test_low_precision_cpu():
    check_low_precision("cpu")


@requires_cuda
def test_low_precision_cuda():
    check_low_precision("cuda")


def test_fallback_to_reference(without_extension, caplog):
    a, b = _rand(1, 2, 3, 4, seed=1), _rand(1, 2, 3, 4, seed=2)
    with caplog.at_level(logging.WARNING, logger=_ext.__name__):
        out = local_correlation(a, b, 1)
        local_correlation(a, b, 1)
    assert torch.equal(out, local_correlation_reference(a, b, 1))
    assert len([r for r in caplog.records if "local_correlation" in r.message]) == 1


@pytest.mark.parametrize("op", [local_correlation, local_correlation_reference])
def test_bad_correlation_inputs(op):
    a, b = _rand(1, 2, 3, 4), _rand(1, 2, 3, 4)
    with pytest.raises(ValueError, match="k must be"):
        op(a, b, -1)
    with pytest.raises(ValueError, match="k must be"):
        op(a, b, 1.5)
    with pytest.raises(ValueError, match="must be \\(N, C, H, W\\)"):
        op(a[0], b, 1)
    with pytest.raises(ValueError, match="same channels"):
        op(a, b[:, :1], 1)
    with pytest.raises(ValueError, match="spatial"):
        op(a, b[:, :, :2], 1)
    with pytest.raises(TypeError, match="dtypes differ"):
        op(a, b.float(), 1)
    with pytest.raises(TypeError, match="floating point"):
        op(a.long(), b.long(), 1)
    with pytest.raises(ValueError, match="devices differ"):
        op(a, b.to("meta"), 1)


@pytest.mark.parametrize("op", [local_aggregate, local_aggregate_reference])
def test_bad_aggregate_inputs(op):
    weights, m = _rand(1, 9, 3, 4), _rand(1, 5, 3, 4)
    with pytest.raises(ValueError, match="\\(2k \\+ 1\\)\\^2 = 25"):
        op(weights, m, 2)
    with pytest.raises(ValueError, match="spatial"):
        op(weights, m[..., :3], 1)


def test_module_arguments():
    assert "k=2" in repr(MatchTransAlign())
    with pytest.raises(ValueError, match="normalization"):
        MatchTransAlign(normalization="l2")
    with pytest.raises(ValueError, match="k must be"):
        MatchTransAlign(k=-1)


@requires_extension
def test_kernel_checks_its_inputs():
    # Direct torch.ops calls skip the Python checks; the C++ op still refuses bad input.
    a, b = _rand(1, 2, 3, 4), _rand(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match="k must be >= 0"):
        torch.ops.vod_d2.local_correlation_forward(a, b, -1)
    with pytest.raises(RuntimeError, match="25 channels"):
        torch.ops.vod_d2.local_aggregate_forward(_rand(1, 9, 3, 4), b, 2)
