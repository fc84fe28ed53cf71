import logging

import pytest
import torch
import torchvision
from _testing import requires_cuda, requires_extension

from vod_d2.layers import (
    DeformPSRoIPool,
    _ext,
    deform_ps_roi_pool,
    deform_ps_roi_pool_reference,
)


def _rois(num_rois, num_images, height, width, spatial_scale, dtype, generator, device="cpu"):
    """(R, 5) random boxes over the image, some partly or wholly outside it, some tiny."""
    size = torch.tensor([width, height], dtype=dtype) / spatial_scale
    xy1 = (torch.rand(num_rois, 2, generator=generator, dtype=dtype) * 1.4 - 0.2) * size
    wh = torch.rand(num_rois, 2, generator=generator, dtype=dtype) ** 2 * size
    batch = torch.randint(0, num_images, (num_rois, 1), generator=generator).to(dtype)
    return torch.cat([batch, xy1, xy1 + wh], dim=1).to(device)


def _inputs(
    device, k=3, c_out=2, n=2, h=6, w=7, r=5, spatial_scale=0.5, dtype=torch.float64, seed=0
):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, c_out * k * k, h, w, generator=g, dtype=dtype).to(device)
    rois = _rois(r, n, h, w, spatial_scale, dtype, g, device)
    offsets = torch.randn(r, 2, k, k, generator=g, dtype=dtype).to(device)
    return features, rois, offsets


def check_zero_offsets_are_ps_roi_align(fn, device):
    # The same floating point operations as torchvision's kernel: equal, not merely close.
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for k in (1, 3, 7):
            for sampling_ratio in (-1, 0, 1, 2):
                for spatial_scale in (1 / 16, 0.5, 1 / 3):
                    features = torch.randn(2, 2 * k * k, 9, 11, generator=g, dtype=dtype)
                    features = features.to(device)
                    rois = _rois(12, 2, 9, 11, spatial_scale, dtype, g, device)
                    expected = torchvision.ops.ps_roi_align(
                        features, rois, k, spatial_scale, sampling_ratio
                    )
                    zeros = torch.zeros(12, 2, k, k, dtype=dtype, device=device)
                    case = f"{dtype} k={k} sampling_ratio={sampling_ratio} scale={spatial_scale}"
                    for offsets in (None, zeros):
                        out = fn(features, rois, offsets, k, spatial_scale, sampling_ratio)
                        assert torch.equal(out, expected), f"{case} offsets={offsets is not None}"


def test_zero_offsets_are_ps_roi_align_reference():
    check_zero_offsets_are_ps_roi_align(deform_ps_roi_pool_reference, "cpu")


@requires_extension
def test_zero_offsets_are_ps_roi_align_kernel_cpu():
    check_zero_offsets_are_ps_roi_align(deform_ps_roi_pool, "cpu")


@requires_cuda
def test_zero_offsets_match_ps_roi_align_kernel_cuda():
    # nvcc contracts multiply-adds differently in the two kernels: close, not equal.
    g = torch.Generator().manual_seed(0)
    for k in (1, 3, 7):
        for sampling_ratio in (-1, 2):
            features = torch.randn(2, 2 * k * k, 9, 11, generator=g).cuda()
            rois = _rois(12, 2, 9, 11, 0.5, torch.float32, g, "cuda")
            torch.testing.assert_close(
                deform_ps_roi_pool(features, rois, None, k, 0.5, sampling_ratio),
                torchvision.ops.ps_roi_align(features, rois, k, 0.5, sampling_ratio),
                msg=f"k={k} sampling_ratio={sampling_ratio}",
            )


def _linear_maps(k, height, width, dtype=torch.float64, device="cpu"):
    """(1, k * k, H, W): channel group g holds 100 g + 10 y + x, exact under bilinear sampling."""
    y = torch.arange(height, dtype=dtype).view(1, 1, -1, 1)
    x = torch.arange(width, dtype=dtype).view(1, 1, 1, -1)
    group = torch.arange(k * k, dtype=dtype).view(1, -1, 1, 1)
    return (100 * group + 10 * y + x).to(device)


def check_hand_computed(fn, device):
    # k = 2 on a 4 x 4 map, RoI (0, 0, 4, 4) at scale 1: on the map it spans (-0.5, 3.5) on both
    # axes (torchvision's -0.5), bins of 2 cells, and one sample per bin at its centre
    # (0.5 + 2 i, 0.5 + 2 j). Bin (i, j) reads group 2 i + j: 100 (2 i + j) + 10 y + x, i.e.
    # 5.5, 107.5, 225.5, 327.5. Offsets move a bin by 0.1 * offset * 4 cells:
    # bin (0, 0) dx = 0.5 -> x = 0.7: 5.7; bin (1, 0) dy = -1 -> y = 2.1: 200 + 21 + 0.5 = 221.5;
    # bin (1, 1) dx = 2 -> x = 3.3, past the last column, read at x = 3: 300 + 25 + 3 = 328;
    # bin (0, 1) dx = 5 -> x = 4.5 > W = 4: outside, zero.
    features = _linear_maps(2, 4, 4, device=device)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], dtype=torch.float64, device=device)
    expected = torch.tensor([[5.5, 107.5], [225.5, 327.5]], dtype=torch.float64, device=device)
    out = fn(features, rois, None, 2, 1.0, 1)
    torch.testing.assert_close(out, expected.view(1, 1, 2, 2))
    # On the borders of the rule: a sample at x = -1 (y = -1) is read at 0, one at x = W is read
    # at the last column. RoI x from -2 to 4: bins of 3 cells, centres x = -1 and 2; RoI x from 0
    # to 6: centres x = 1 and 4 (= W); the same along y.
    border_rois = torch.tensor(
        [[0, -2.0, 0.0, 4.0, 4.0], [0, 0.0, 0.0, 6.0, 4.0]]
        + [[0, 0.0, -2.0, 4.0, 4.0], [0, 0.0, 0.0, 4.0, 6.0]],
        dtype=torch.float64,
        device=device,
    )
    expected = torch.tensor(
        [[[5.0, 107.0], [225.0, 327.0]], [[6.0, 108.0], [226.0, 328.0]]]
        + [[[0.5, 102.5], [220.5, 322.5]], [[10.5, 112.5], [230.5, 332.5]]],
        dtype=torch.float64,
        device=device,
    )
    torch.testing.assert_close(fn(features, border_rois, None, 2, 1.0, 1), expected.unsqueeze(1))
    offsets = torch.zeros(1, 2, 2, 2, dtype=torch.float64, device=device)
    offsets[0, 0, 0, 0] = 0.5
    offsets[0, 1, 1, 0] = -1.0
    offsets[0, 0, 1, 1] = 2.0
    offsets[0, 0, 0, 1] = 5.0
    offsets.requires_grad_()
    out = fn(features, rois, offsets, 2, 1.0, 1)
    expected = torch.tensor([[5.7, 0.0], [221.5, 328.0]], dtype=torch.float64, device=device)
    torch.testing.assert_close(out, expected.view(1, 1, 2, 2))
    # d out / d offset = 0.1 * 4 * slope of the map (1 along x, 10 along y) inside the map, and
    # zero where the sample is clamped (bin (1, 1) along x) or outside (bin (0, 1)).
    out.sum().backward()
    expected_grad = torch.tensor(
        [[[0.4, 0.0], [0.4, 0.0]], [[4.0, 0.0], [4.0, 4.0]]], dtype=torch.float64, device=device
    )
    torch.testing.assert_close(offsets.grad, expected_grad.view(1, 2, 2, 2))


def test_hand_computed_reference():
    check_hand_computed(deform_ps_roi_pool_reference, "cpu")


@requires_extension
def test_hand_computed_kernel_cpu():
    check_hand_computed(deform_ps_roi_pool, "cpu")


@requires_cuda
def test_hand_computed_kernel_cuda():
    check_hand_computed(deform_ps_roi_pool, "cuda")


def check_shift_by_one_bin(fn, device):
    # The same map in every channel group: an offset of one bin width (dx = 1 / (k * gamma))
    # makes bin (i, j) read what bin (i, j + 1) reads without offsets.
    k, gamma = 3, 0.1
    base = torch.randn(1, 1, 8, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features = base.expand(2, k * k, -1, -1).contiguous().to(device)
    rois = torch.tensor([[0, 2.0, 3.0, 10.0, 12.0], [1, 0.0, 1.0, 7.0, 6.0]], dtype=torch.float64)
    rois = rois.to(device)
    offsets = torch.zeros(2, 2, k, k, dtype=torch.float64, device=device)
    offsets[:, 0] = 1 / (k * gamma)
    still = fn(features, rois, None, k, 1.0, 2, gamma)
    moved = fn(features, rois, offsets, k, 1.0, 2, gamma)
    torch.testing.assert_close(moved[..., :-1], still[..., 1:])
    offsets = offsets.flip(1)  # dy: one bin down
    moved = fn(features, rois, offsets, k, 1.0, 2, gamma)
    torch.testing.assert_close(moved[..., :-1, :], still[..., 1:, :])


def test_shift_by_one_bin_reference():
    check_shift_by_one_bin(deform_ps_roi_pool_reference, "cpu")


@requires_extension
def test_shift_by_one_bin_kernel_cpu():
    check_shift_by_one_bin(deform_ps_roi_pool, "cpu")


def check_gradcheck(fn, device):
    features, rois, offsets = _inputs(device, k=2, c_out=1, n=1, h=4, w=5, r=4)
    for sampling_ratio in (-1, 2):
        tensors = (features.detach().requires_grad_(), offsets.detach().requires_grad_())
        assert torch.autograd.gradcheck(
            lambda x, o: fn(x, rois, o, 2, 0.5, sampling_ratio), tensors
        ), sampling_ratio
        assert torch.autograd.gradcheck(
            lambda x: fn(x, rois, None, 2, 0.5, sampling_ratio), tensors[:1]
        ), sampling_ratio


def test_gradcheck_reference():
    check_gradcheck(deform_ps_roi_pool_reference, "cpu")


@requires_extension
def test_gradcheck_kernel_cpu():
    check_gradcheck(deform_ps_roi_pool, "cpu")


@requires_cuda
def test_gradcheck_kernel_cuda():
    check_gradcheck(deform_ps_roi_pool, "cuda")


def _grads(fn, features, rois, offsets, seed=1):
    features = features.detach().requires_grad_()
    if offsets is not None:
        offsets = offsets.detach().requires_grad_()
    out = fn(features, rois, offsets)
    weight = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype
    ).to(out.device)
    (out * weight).sum().backward()
    return out.detach(), features.grad, None if offsets is None else offsets.grad


def check_parity(device):
    cases = [
        dict(),
        dict(k=7, c_out=3, h=8, w=10, r=9),  # RoIs larger than the map: large sample grids
        dict(k=1, r=6, n=3),
        dict(k=3, h=1, w=5),  # a single row: y always clamped
        dict(r=0),  # no RoIs
        dict(contiguous=False),
        dict(dtype=torch.float32, r=20),
    ]
    for case in cases:
        contiguous = case.pop("contiguous", True)
        k = case.get("k", 3)
        features, rois, offsets = _inputs(device, **case)
        if not contiguous:  # channels-last features, offsets and RoIs seen through views
            features = features.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            offsets = offsets.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            rois = rois.t().contiguous().t()
            assert not (features.is_contiguous() or offsets.is_contiguous())
        for sampling_ratio in (-1, 2):
            for offsets_or_none in (3 * offsets, None):
                results = [
                    _grads(
                        lambda x, r, o: fn(x, r, o, k, 0.5, sampling_ratio),
                        features,
                        rois,
                        offsets_or_none,
                    )
                    for fn in (deform_ps_roi_pool, deform_ps_roi_pool_reference)
                ]
                msg = f"{case} contiguous={contiguous} sampling_ratio={sampling_ratio}"
                msg += f" offsets={offsets_or_none is not None}"
                for name, got, expected in zip(("out", "grad input", "grad offsets"), *results):
                    torch.testing.assert_close(got, expected, msg=f"{name}: {msg}")


@requires_extension
def test_parity_cpu():
    check_parity("cpu")


@requires_cuda
def test_parity_cuda():
    check_parity("cuda")


def check_low_precision(device):
    features, rois, offsets = _inputs(device, dtype=torch.float32, c_out=4)
    expected = deform_ps_roi_pool_reference(features, rois, offsets, 3, 0.5)
    for dtype in (torch.float16, torch.bfloat16):
        out = deform_ps_roi_pool(features.to(dtype), rois.to(dtype), offsets.to(dtype), 3, 0.5)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05, msg=str(dtype))


@requires_extension
def test_low_precision_cpu():
    check_low_precision("cpu")


@requires_cuda
def test_low_precision_cuda():
    check_low_precision("cuda")


@pytest.mark.parametrize("fn", [deform_ps_roi_pool, deform_ps_roi_pool_reference])
def test_empty_rois(fn):
    features, rois, offsets = _inputs("cpu", r=0)
    features.requires_grad_()
    offsets.requires_grad_()
    out = fn(features, rois, offsets, 3, 0.5)
    assert out.shape == (0, 2, 3, 3)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert offsets.grad.shape == (0, 2, 3, 3)


@requires_extension
def test_deterministic_cpu(deterministic_algorithms):
    # The CPU backward writes without atomics: allowed in deterministic mode, and repeatable.
    features, rois, offsets = _inputs("cpu", dtype=torch.float32, r=20)
    first, second = (
        _grads(lambda *t: deform_ps_roi_pool(*t, 3, 0.5), features, rois, offsets) for _ in range(2)
    )
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@requires_cuda
def test_deterministic_mode_refuses_cuda_backward(deterministic_algorithms):
    # The input gradient is accumulated with atomics, as in torchvision's kernels.
    features, rois, offsets = _inputs("cuda", dtype=torch.float32)
    with pytest.raises(RuntimeError, match="deterministic"):
        _grads(lambda *t: deform_ps_roi_pool(*t, 3, 0.5), features, rois, offsets)


def test_fallback_to_reference(without_extension, caplog):
    features, rois, offsets = _inputs("cpu")
    with caplog.at_level(logging.WARNING, logger=_ext.__name__):
        out = deform_ps_roi_pool(features, rois, offsets, 3, 0.5)
        deform_ps_roi_pool(features, rois, offsets, 3, 0.5)
    assert torch.equal(out, deform_ps_roi_pool_reference(features, rois, offsets, 3, 0.5))
    assert len([r for r in caplog.records if "deform_ps_roi_pool" in r.message]) == 1


@pytest.mark.parametrize("fn", [deform_ps_roi_pool, deform_ps_roi_pool_reference])
def test_bad_inputs(fn):
    features, rois, offsets = _inputs("cpu")  # k = 3, 18 channels
    with pytest.raises(ValueError, match="input must be"):
        fn(features[0], rois, offsets, 3, 0.5)
    with pytest.raises(ValueError, match="multiple of output_size"):
        fn(features[:, :10], rois, offsets, 3, 0.5)
    with pytest.raises(ValueError, match="rois must be"):
        fn(features, rois[:, 1:], offsets, 3, 0.5)
    with pytest.raises(ValueError, match="offsets must be"):
        fn(features, rois, offsets[:, :, :2], 3, 0.5)
    with pytest.raises(ValueError, match="offsets must be"):
        fn(features, rois, offsets[:2], 3, 0.5)
    with pytest.raises(TypeError, match="one dtype"):
        fn(features, rois.float(), offsets, 3, 0.5)
    with pytest.raises(TypeError, match="one dtype"):
        fn(features, rois, offsets.float(), 3, 0.5)
    with pytest.raises(ValueError, match="one device"):
        fn(features, rois, offsets.to("meta"), 3, 0.5)
    with pytest.raises(ValueError, match="output_size"):
        fn(features, rois, offsets, 0, 0.5)
    with pytest.raises(ValueError, match="spatial_scale"):
        fn(features, rois, offsets, 3, 0.0)
    with pytest.raises(ValueError, match="sampling_ratio"):
        fn(features, rois, offsets, 3, 0.5, 1.5)
    with pytest.raises(ValueError, match="trans_std"):
        fn(features, rois, offsets, 3, 0.5, -1, float("nan"))
    with pytest.raises(TypeError, match="offsets must be"):
        fn(features, rois, [0.0], 3, 0.5)
    with pytest.raises((ValueError, RuntimeError), match="image ind"):
        fn(features, rois + torch.tensor([2.0, 0, 0, 0, 0], dtype=rois.dtype), offsets, 3, 0.5)


@requires_extension
def test_kernel_checks_its_inputs():
    # Direct torch.ops calls skip the Python checks; the C++ op still refuses bad input.
    features, rois, offsets = _inputs("cpu")
    op = torch.ops.vod_d2.deform_ps_roi_pool_forward
    with pytest.raises(RuntimeError, match="multiple of output_size"):
        op(features[:, :10], rois, offsets, 0.5, 3, -1, 0.1)
    with pytest.raises(RuntimeError, match="rois must be"):
        op(features, rois[:, :4], offsets, 0.5, 3, -1, 0.1)
    with pytest.raises(RuntimeError, match="offsets must be"):
        op(features, rois, offsets[:, :1], 0.5, 3, -1, 0.1)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        op(features, rois.float(), offsets, 0.5, 3, -1, 0.1)
    with pytest.raises(RuntimeError, match="not an image index"):
        op(
            features,
            rois - torch.tensor([5.0, 0, 0, 0, 0], dtype=rois.dtype),
            None,
            0.5,
            3,
            -1,
            0.1,
        )
    with pytest.raises(RuntimeError, match="grad must be"):
        torch.ops.vod_d2.deform_ps_roi_pool_backward(
            features[:1], features, rois, offsets, 0.5, 3, -1, 0.1
        )


def test_module():
    module = DeformPSRoIPool(3, 0.5, sampling_ratio=2)
    assert "output_size=3, spatial_scale=0.5, sampling_ratio=2, trans_std=0.1" in repr(module)
    features, rois, offsets = _inputs("cpu")
    torch.testing.assert_close(
        module(features, rois, offsets),
        deform_ps_roi_pool_reference(features, rois, offsets, 3, 0.5, 2, 0.1),
    )
    torch.testing.assert_close(
        module(features, rois), torchvision.ops.ps_roi_align(features, rois, 3, 0.5, 2)
    )
    with pytest.raises(ValueError, match="output_size"):
        DeformPSRoIPool(0, 0.5)
