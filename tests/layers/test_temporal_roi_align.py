import logging
import math

import pytest
import torch
from _testing import requires_cuda, requires_extension

from vod_d2.layers import TemporalRoIAlign, _ext, temporal_roi_align, temporal_roi_align_reference


def _inputs(device, r=5, c=6, s=3, b=2, h=4, w=5, dtype=torch.float64, contiguous=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rois = torch.randn(r, c, s, s, generator=g, dtype=dtype)
    support = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    if not contiguous:
        rois = rois.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        support = support.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    batch_index = torch.randint(0, b, (r,), generator=g)  # unsorted on purpose
    return rois.to(device), support.to(device), batch_index.to(device)


def _grads(fn, rois, support, batch_index, seed=1):
    rois, support = rois.detach().requires_grad_(), support.detach().requires_grad_()
    out = fn(rois, support, batch_index)
    weight = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype
    ).to(out.device)
    (out * weight).sum().backward()
    return out.detach(), rois.grad, support.grad


def check_parity(device):
    cases = [
        dict(k=1),
        dict(k=4, contiguous=False),
        dict(k=20),  # every location of the 4 x 5 map
        dict(k=9, r=1, b=3),  # images without RoIs
        dict(k=3, r=1, b=1, contiguous=False),  # single RoI and image: reshapes are views
        # Several similarity chunks: 50 RoIs x 49 cells x 4096 locations > 2^22 entries.
        dict(k=5, r=50, c=3, s=7, b=2, h=64, w=64, dtype=torch.float32),
    ]
    for case in cases:
        k = case.pop("k")
        dtype = case.get("dtype", torch.float64)
        inputs = _inputs(device, **case)
        out, grad_rois, grad_support = _grads(lambda *t: temporal_roi_align(*t, k), *inputs)
        ref, ref_grad_rois, ref_grad_support = _grads(
            lambda *t: temporal_roi_align_reference(*t, k), *inputs
        )
        tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(out, ref, **tol, msg=f"k={k} {case}")
        torch.testing.assert_close(grad_rois, ref_grad_rois, **tol, msg=f"k={k} {case}")
        torch.testing.assert_close(grad_support, ref_grad_support, **tol, msg=f"k={k} {case}")


@requires_extension
def test_parity_cpu():
    check_parity("cpu")


@requires_cuda
def test_parity_cuda():
    check_parity("cuda")


def check_gradcheck(fn, device):
    rois, support, batch_index = _inputs(device, r=3, c=4, s=2, b=2, h=3, w=3)
    for k in (1, 3):
        assert torch.autograd.gradcheck(
            lambda x, y: fn(x, y, batch_index, k),
            (rois.requires_grad_(), support.requires_grad_()),
        ), k


@requires_extension
def test_gradcheck_kernel_cpu():
    check_gradcheck(temporal_roi_align, "cpu")


@requires_cuda
def test_gradcheck_kernel_cuda():
    check_gradcheck(temporal_roi_align, "cuda")


def test_gradcheck_reference():
    check_gradcheck(temporal_roi_align_reference, "cpu")


def check_hand_derived(fn, device):
    # Two support locations with features e1 and 2 e2; a cell equal to e1 has cosines [1, 0]:
    # weights softmax([1, 0]) = [e, 1] / (e + 1), output (e * e1 + 2 e2) / (e + 1).
    support = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]], dtype=torch.float64, device=device)
    roi = torch.tensor([1.0, 0.0], dtype=torch.float64, device=device).view(1, 2, 1, 1)
    index = torch.zeros(1, dtype=torch.int64, device=device)
    e = math.e
    expected = torch.tensor([e, 2.0], dtype=torch.float64, device=device).view(1, 2, 1, 1) / (e + 1)
    torch.testing.assert_close(fn(roi, support, index, 2), expected)
    # K = 1 picks the most similar location, whatever the scale: a cell copied from the support
    # map (and rescaled) gets that location's feature back.
    rois, support, _ = _inputs(device, r=4, c=8, s=2, b=1)
    cells = torch.randint(0, 20, (4, 4), generator=torch.Generator().manual_seed(3))
    flat = support[0].flatten(1)  # (C, H W)
    rois = 3.0 * flat[:, cells.flatten().to(device)].view(8, 4, 2, 2).transpose(0, 1)
    index = torch.zeros(4, dtype=torch.int64, device=device)
    torch.testing.assert_close(fn(rois, support, index, 1), rois / 3.0)


@requires_extension
def test_hand_derived_kernel_cpu():
    check_hand_derived(temporal_roi_align, "cpu")


@requires_cuda
def test_hand_derived_kernel_cuda():
    check_hand_derived(temporal_roi_align, "cuda")


def test_hand_derived_reference():
    check_hand_derived(temporal_roi_align_reference, "cpu")


def check_low_precision(device):
    rois, support, batch_index = _inputs(device, c=16, dtype=torch.float32)
    expected = temporal_roi_align_reference(rois, support, batch_index, 3)
    for dtype in (torch.float16, torch.bfloat16):
        out = temporal_roi_align(rois.to(dtype), support.to(dtype), batch_index, 3)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05, msg=str(dtype))


@requires_extension
def test_low_precision_cpu():
    check_low_precision("cpu")


@requires_cuda
def test_low_precision_cuda():
    check_low_precision("cuda")


@pytest.mark.parametrize("fn", [temporal_roi_align, temporal_roi_align_reference])
def test_no_rois(fn):
    rois, support, batch_index = _inputs("cpu", r=0)
    for support_maps in (support, support.unsqueeze(1).expand(-1, 3, -1, -1, -1)):
        rois.grad = None
        rois.requires_grad_()
        support_maps = support_maps.detach().requires_grad_()
        out = fn(rois, support_maps, batch_index, 3)
        assert out.shape == (0, 6, 3, 3) if support_maps.dim() == 4 else (0, 3, 6, 3, 3)
        out.sum().backward()  # connected to both inputs, even when empty
        assert torch.equal(support_maps.grad, torch.zeros_like(support_maps))
        assert rois.grad.shape == rois.shape


def _grouped_inputs(device, r=5, c=6, s=3, b=2, t=3, h=4, w=5, dtype=torch.float64, seed=0):
    """RoIs and (B, T, C, H, W) groups of support maps."""
    rois, support, batch_index = _inputs(device, r=r, c=c, s=s, b=b * t, h=h, w=w, dtype=dtype)
    batch_index = torch.randint(0, b, (r,), generator=torch.Generator().manual_seed(seed + 1))
    return rois, support.view(b, t, c, h, w), batch_index.to(device)


def check_grouped_matches_repeated(fn, device):
    # The grouped form is the one-map form with every RoI repeated once per support map t and
    # pointed at map b * T + t of the flattened groups; the gradients add up over the repeats.
    for case in (dict(), dict(t=1), dict(r=1, b=3, t=2), dict(k=20, t=2)):
        k = case.pop("k", 4)
        rois, support, batch_index = _grouped_inputs(device, **case)
        b, t = support.shape[:2]
        out, grad_rois, grad_support = _grads(lambda *x: fn(*x, k), rois, support, batch_index)
        assert out.shape == (rois.shape[0], t, *rois.shape[1:])
        repeated_rois = rois.repeat_interleave(t, dim=0)
        repeated_index = (batch_index[:, None] * t + torch.arange(t, device=device)).flatten()
        expected, expected_grad_rois, expected_grad_support = _grads(
            lambda x, y, i: fn(x, y, i, k),
            repeated_rois,
            support.flatten(0, 1),
            repeated_index,
        )
        torch.testing.assert_close(out.flatten(0, 1), expected, msg=str(case))
        torch.testing.assert_close(
            grad_rois, expected_grad_rois.view(-1, t, *rois.shape[1:]).sum(1), msg=str(case)
        )
        torch.testing.assert_close(grad_support.flatten(0, 1), expected_grad_support, msg=str(case))


@requires_extension
def test_grouped_matches_repeated_kernel_cpu():
    check_grouped_matches_repeated(temporal_roi_align, "cpu")


@requires_cuda
def test_grouped_matches_repeated_kernel_cuda():
    check_grouped_matches_repeated(temporal_roi_align, "cuda")


def test_grouped_matches_repeated_reference():
    check_grouped_matches_repeated(temporal_roi_align_reference, "cpu")


def check_grouped_parity_and_gradcheck(device):
    rois, support, batch_index = _grouped_inputs(device, r=7, b=2, t=3)
    out, grad_rois, grad_support = _grads(
        lambda *x: temporal_roi_align(*x, 5), rois, support, batch_index
    )
    expected = _grads(lambda *x: temporal_roi_align_reference(*x, 5), rois, support, batch_index)
    for name, got, want in zip(
        ("out", "grad rois", "grad support"), (out, grad_rois, grad_support), expected
    ):
        torch.testing.assert_close(got, want, msg=name)
    rois, support, batch_index = _grouped_inputs(device, r=3, c=3, s=2, b=2, t=2, h=3, w=3)
    for fn in (temporal_roi_align, temporal_roi_align_reference):
        assert torch.autograd.gradcheck(
            lambda x, y: fn(x, y, batch_index, 2),
            (rois.requires_grad_(), support.requires_grad_()),
        ), fn.__name__


@requires_extension
def test_grouped_parity_and_gradcheck_cpu():
    check_grouped_parity_and_gradcheck("cpu")


@requires_cuda
def test_grouped_parity_and_gradcheck_cuda():
    check_grouped_parity_and_gradcheck("cuda")


def check_zero_norms(fn, device):
    # A zero RoI cell has cosine 0 with every location: all are tied, the lower indices win
    # (0..K-1, with uniform weights), and its clamped norm passes no gradient. A zero support
    # location is never more similar than another, and its clamped norm only passes the gradient
    # of its value: finite, like every other gradient (not ~1e12).
    rois, support, batch_index = _grouped_inputs(device, r=4, t=2)
    rois[1, :, 0, 2] = 0
    rois[3, :, 1, 1] = 0
    support[:, :, :, 0, 1] = 0
    k = 3
    out, grad_rois, grad_support = _grads(lambda *x: fn(*x, k), rois, support, batch_index)
    first_k = support.flatten(3)[batch_index[1], :, :, :k].mean(-1)  # (T, C)
    torch.testing.assert_close(out[1, :, :, 0, 2], first_k)
    assert torch.equal(grad_rois[1, :, 0, 2], torch.zeros_like(grad_rois[1, :, 0, 2]))
    assert torch.equal(grad_rois[3, :, 1, 1], torch.zeros_like(grad_rois[3, :, 1, 1]))
    assert grad_rois.abs().max() < 100 and grad_support.abs().max() < 100
    assert grad_rois[0].abs().sum() > 0  # the other cells still learn
    return out, grad_rois, grad_support


@requires_extension
def test_zero_norms_kernel_cpu():
    results = check_zero_norms(temporal_roi_align, "cpu")
    expected = check_zero_norms(temporal_roi_align_reference, "cpu")
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)


@requires_cuda
def test_zero_norms_kernel_cuda():
    check_zero_norms(temporal_roi_align, "cuda")


def test_zero_norms_reference():
    check_zero_norms(temporal_roi_align_reference, "cpu")


def check_ties_lower_index_first(fn, device):
    # Support map with repeated columns: locations 1 and 3 hold the same feature, so do 0 and 2.
    # A cell equal to that feature ties locations 1 and 3; K = 1 takes 1 (lower flat index).
    # Different scales of the tied locations reveal which one was taken.
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # (C, 2)
    support = torch.stack([base[:, 0], base[:, 1], 3 * base[:, 0], 5 * base[:, 1]], dim=1)
    support = support.view(1, 2, 1, 4).to(device)
    roi = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device).view(1, 2, 1, 1)
    index = torch.zeros(1, dtype=torch.int64, device=device)
    torch.testing.assert_close(fn(roi, support, index, 1), support[..., 1].view(1, 2, 1, 1))
    roi = torch.tensor([1.0, 0.0], dtype=torch.float64, device=device).view(1, 2, 1, 1)
    torch.testing.assert_close(fn(roi, support, index, 1), support[..., 0].view(1, 2, 1, 1))


@requires_extension
def test_ties_lower_index_first_kernel_cpu():
    check_ties_lower_index_first(temporal_roi_align, "cpu")


@requires_cuda
def test_ties_lower_index_first_kernel_cuda():
    check_ties_lower_index_first(temporal_roi_align, "cuda")


def test_ties_lower_index_first_reference():
    check_ties_lower_index_first(temporal_roi_align_reference, "cpu")


@pytest.mark.parametrize("fn", [temporal_roi_align, temporal_roi_align_reference])
def test_no_channels(fn):
    rois, support, batch_index = _grouped_inputs("cpu", c=0)
    for support_maps in (support, support[:, 0]):
        rois.grad = None
        rois.requires_grad_()
        support_maps = support_maps.detach().requires_grad_()
        out = fn(rois, support_maps, batch_index, 3)
        assert out.shape == ((5, 3, 0, 3, 3) if support_maps.dim() == 5 else (5, 0, 3, 3))
        out.sum().backward()
        assert support_maps.grad.shape == support_maps.shape


@requires_extension
def test_deterministic_cpu(deterministic_algorithms):
    # The CPU backward writes without atomics: allowed in deterministic mode, and repeatable.
    inputs = _grouped_inputs("cpu", r=20, dtype=torch.float32)
    first, second = (_grads(lambda *t: temporal_roi_align(*t, 4), *inputs) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@requires_cuda
def test_deterministic_mode_refuses_cuda_backward(deterministic_algorithms):
    # The support gradient is accumulated with atomics.
    inputs = _grouped_inputs("cuda", dtype=torch.float32)
    with pytest.raises(RuntimeError, match="deterministic"):
        _grads(lambda *t: temporal_roi_align(*t, 4), *inputs)


def test_fallback_to_reference(without_extension, caplog):
    inputs = _inputs("cpu")
    with caplog.at_level(logging.WARNING, logger=_ext.__name__):
        out = temporal_roi_align(*inputs, 3)
        temporal_roi_align(*inputs, 3)
    assert torch.equal(out, temporal_roi_align_reference(*inputs, 3))
    assert len([r for r in caplog.records if "temporal_roi_align" in r.message]) == 1


def test_fallback_without_cuda_kernels(fresh_warnings, caplog, monkeypatch):
    class CpuOnlyExtension:
        @staticmethod
        def with_cuda():
            return False

    monkeypatch.setattr(_ext, "_C", CpuOnlyExtension)
    with caplog.at_level(logging.WARNING, logger=_ext.__name__):
        assert not _ext.use_kernel("temporal_roi_align", torch.device("cuda", 0))
        assert not _ext.use_kernel("temporal_roi_align", torch.device("cuda", 0))
        assert _ext.use_kernel("temporal_roi_align", torch.device("cpu"))
    assert len([r for r in caplog.records if "without CUDA" in r.message]) == 1


@pytest.mark.parametrize("fn", [temporal_roi_align, temporal_roi_align_reference])
def test_bad_inputs(fn):
    rois, support, index = _inputs("cpu")  # 4 x 5 support maps
    for k in (0, 21, 33, 2.0):
        with pytest.raises(ValueError, match="k must be"):
            fn(rois, support, index, k)
    with pytest.raises(ValueError, match="roi_features must be"):
        fn(rois[0], support, index, 2)
    with pytest.raises(ValueError, match="support_features must be"):
        fn(rois, support[0], index, 2)
    with pytest.raises(ValueError, match="B >= 1"):
        fn(rois[:0], support[:0], index[:0], 2)
    with pytest.raises(ValueError, match="same channels"):
        fn(rois, support.unsqueeze(1)[:, :, :2], index, 2)
    with pytest.raises(ValueError, match="same channels"):
        fn(rois, support[:, :2], index, 2)
    with pytest.raises(TypeError, match="dtype"):
        fn(rois, support.float(), index, 2)
    with pytest.raises(ValueError, match="int64"):
        fn(rois, support, index.int(), 2)
    with pytest.raises(ValueError, match="int64"):
        fn(rois, support, index[:2], 2)
    with pytest.raises(ValueError, match="lie in \\[0, 2\\)"):
        fn(rois, support, index + 2, 2)
    with pytest.raises(ValueError, match="one device"):
        fn(rois, support.to("meta"), index, 2)


def test_module():
    module = TemporalRoIAlign(k=4)
    assert "k=4" in repr(module)
    rois, support, index = _inputs("cpu")
    torch.testing.assert_close(
        module(rois, support, index), temporal_roi_align_reference(rois, support, index, 4)
    )
    with pytest.raises(ValueError, match="k must be"):
        TemporalRoIAlign(k=40)


@requires_extension
def test_kernel_checks_its_inputs():
    # Direct torch.ops calls skip the Python checks; the C++ op still refuses bad input.
    rois, support, index = _inputs("cpu")
    support = support.unsqueeze(1)  # the op takes (B, T, C, H, W)
    op = torch.ops.vod_d2.temporal_roi_align_forward
    with pytest.raises(RuntimeError, match="k must be in \\[1, 32\\]"):
        op(rois, support, index, 33)
    with pytest.raises(RuntimeError, match="must lie in \\[0, 2\\)"):
        op(rois, support, index - 1, 2)
    with pytest.raises(RuntimeError, match="int64"):
        op(rois, support, index.int(), 2)
    with pytest.raises(RuntimeError, match="must be \\(B, T, C, H, W\\)"):
        op(rois, support[:, 0], index, 2)
