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
    rois.requires_grad_()
    support.requires_grad_()
    out = fn(rois, support, batch_index, 3)
    assert out.shape == (0, 6, 3, 3)
    if out.requires_grad:  # the reference's empty output is not connected to the inputs
        out.sum().backward()
        assert torch.equal(support.grad, torch.zeros_like(support))


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
    op = torch.ops.vod_d2.temporal_roi_align_forward
    with pytest.raises(RuntimeError, match="k must be in \\[1, 32\\]"):
        op(rois, support, index, 33)
    with pytest.raises(RuntimeError, match="must lie in \\[0, 2\\)"):
        op(rois, support, index - 1, 2)
    with pytest.raises(RuntimeError, match="int64"):
        op(rois, support, index.int(), 2)
