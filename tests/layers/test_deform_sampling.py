import logging

import pytest
import torch
from _testing import requires_cuda, requires_extension

from vod_d2.layers import (
    DeformableSimilaritySampling,
    _ext,
    deformable_similarity_sampling,
    deformable_similarity_sampling_reference,
)


def _inputs(
    device,
    dtype=torch.float64,
    b=2,
    cq=3,
    c=4,
    h=5,
    w=6,
    n=4,
    per_position=False,
    scale=4.0,
    contiguous=True,
    positive=False,
    seed=0,
):
    """Random inputs; offsets in [-scale, scale] reach outside the map on every side."""
    g = torch.Generator().manual_seed(seed)

    def feature(channels):
        if contiguous:
            x = torch.rand(b, channels, h, w, generator=g, dtype=dtype)
        else:  # channels-last storage seen as (B, C, H, W): not contiguous
            x = torch.rand(b, h, w, channels, generator=g, dtype=dtype).permute(0, 3, 1, 2)
        return (x if positive else 2 * x - 1).to(device)

    shape = (b, 2 * n, h, w) if per_position else (n, 2)
    offsets = ((torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) * scale).to(device)
    if not contiguous:
        offsets = offsets.transpose(0, -1).contiguous().transpose(0, -1)
    return feature(cq), feature(cq), feature(c), offsets


def _grads(fn, tensors, seed=1):
    tensors = [t.detach().requires_grad_() for t in tensors]
    out = fn(*tensors)
    weight = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype
    ).to(out.device)
    (out * weight).sum().backward()
    return out.detach(), [t.grad for t in tensors]


def check_parity(device):
    for per_position in (False, True):
        for normalization in ("softmax", "sum"):
            for contiguous in (True, False):
                inputs = _inputs(
                    device,
                    per_position=per_position,
                    contiguous=contiguous,
                    positive=normalization == "sum",
                )
                assert contiguous or not inputs[0].is_contiguous()
                out, grads = _grads(
                    lambda *t: deformable_similarity_sampling(*t, normalization=normalization),
                    inputs,
                )
                ref, ref_grads = _grads(
                    lambda *t: deformable_similarity_sampling_reference(
                        *t, normalization=normalization
                    ),
                    inputs,
                )
                case = f"per_position={per_position} {normalization} contiguous={contiguous}"
                torch.testing.assert_close(out, ref, msg=case)
                for name, grad, ref_grad in zip(
                    ("query", "key", "value", "offsets"), grads, ref_grads
                ):
                    torch.testing.assert_close(grad, ref_grad, msg=f"{case}: grad of {name}")


@requires_extension
def test_parity_cpu():
    assert _ext.use_kernel("test", torch.device("cpu"))
    check_parity("cpu")


@requires_cuda
def test_parity_cuda():
    check_parity("cuda")


def check_gradcheck(fn, device):
    for per_position in (False, True):
        query, key, value, offsets = _inputs(
            device, b=1, cq=2, c=2, h=4, w=5, n=3, per_position=per_position, scale=2.0
        )
        # Keep the locations away from integers, where bilinear sampling has a kink.
        offsets = offsets.round() + 0.37
        tensors = [t.detach().requires_grad_() for t in (query, key, value, offsets)]
        assert torch.autograd.gradcheck(fn, tensors), f"per_position={per_position}"


@requires_extension
def test_gradcheck_kernel_cpu():
    check_gradcheck(deformable_similarity_sampling, "cpu")


@requires_cuda
def test_gradcheck_kernel_cuda():
    check_gradcheck(deformable_similarity_sampling, "cuda")


def test_gradcheck_reference():
    check_gradcheck(deformable_similarity_sampling_reference, "cpu")
    check_gradcheck(
        lambda *t: deformable_similarity_sampling_reference(*t, normalization="sum"), "cpu"
    )


def _shifted(value, dy, dx):
    """value(y + dy, x + dx), zero outside: written out with explicit loops."""
    out = torch.zeros_like(value)
    h, w = value.shape[2:]
    for y in range(h):
        for x in range(w):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[:, :, y, x] = value[:, :, y + dy, x + dx]
    return out


def check_integer_offsets_shift(fn, device):
    # One point at an integer offset: its softmax weight is 1 and bilinear sampling is exact, so
    # the output is the value map shifted by (dy, dx) (rows first), zero where it leaves the map.
    query, key, value, _ = _inputs(device, b=1, h=4, w=5)
    for dy, dx in ((0, 0), (1, -2), (-3, 1), (0, 4), (5, 0)):
        offsets = torch.tensor([[dy, dx]], dtype=value.dtype, device=device)
        out = fn(query, key, value, offsets)
        assert torch.equal(out, _shifted(value, dy, dx)), (dy, dx)


def check_uniform_weights(fn, device):
    # A zero query makes every similarity 0: softmax weights are 1/N, so the output is the mean
    # of the N shifted maps.
    _, key, value, _ = _inputs(device, b=1, h=4, w=5)
    query = torch.zeros_like(key)
    offsets = torch.tensor([[0, 0], [1, 1], [-1, 2]], dtype=value.dtype, device=device)
    expected = sum(_shifted(value, dy, dx) for dy, dx in [(0, 0), (1, 1), (-1, 2)]) / 3
    torch.testing.assert_close(fn(query, key, value, offsets), expected)


def check_peaked_affinity_is_identity(fn, device):
    # Query = key = a large one-hot code of the position: only the zero offset matches, so the
    # softmax puts all its weight (up to e^-400) on p0 itself and the output is the value map.
    h, w = 3, 4
    code = 20.0 * torch.eye(h * w, dtype=torch.float64, device=device).view(1, h * w, h, w)
    value = torch.randn(1, 5, h, w, dtype=torch.float64).to(device)
    offsets = torch.tensor(
        [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-0.5, 0.5]], dtype=torch.float64, device=device
    )
    torch.testing.assert_close(fn(code, code, value, offsets), value)


def check_per_position_matches_shared(fn, device):
    query, key, value, shared = _inputs(device, b=2, h=4, w=5, n=3)
    per_position = shared.view(1, -1, 1, 1).expand(2, -1, 4, 5).contiguous()
    torch.testing.assert_close(fn(query, key, value, per_position), fn(query, key, value, shared))


HAND_CHECKS = (
    check_integer_offsets_shift,
    check_uniform_weights,
    check_peaked_affinity_is_identity,
    check_per_position_matches_shared,
)


@requires_extension
@pytest.mark.parametrize("check", HAND_CHECKS)
def test_hand_derived_kernel_cpu(check):
    check(deformable_similarity_sampling, "cpu")


@requires_cuda
@pytest.mark.parametrize("check", HAND_CHECKS)
def test_hand_derived_kernel_cuda(check):
    check(deformable_similarity_sampling, "cuda")


@pytest.mark.parametrize("check", HAND_CHECKS)
def test_hand_derived_reference(check):
    check(deformable_similarity_sampling_reference, "cpu")


def check_low_precision(device):
    inputs = _inputs(device, dtype=torch.float32, c=8)
    expected = deformable_similarity_sampling_reference(*inputs)
    for dtype in (torch.float16, torch.bfloat16):
        out = deformable_similarity_sampling(*(t.to(dtype) for t in inputs))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05, msg=str(dtype))


@requires_extension
def test_low_precision_cpu():
    check_low_precision("cpu")


@requires_cuda
def test_low_precision_cuda():
    check_low_precision("cuda")


def check_float32_offsets_with_low_precision_features(fn, device):
    # Mixed precision: half-precision features with float32 shared offsets, under a loss scale
    # of 2^16 (the output gradients, below 2^16 / 4, still fit float16). The offsets' gradient
    # sums over B * H * W = 800 positions and goes beyond float16's 65504: it must come back in
    # float32, finite and close to the float64 gradient.
    query, key, value, offsets = _inputs(device, b=2, c=16, h=20, w=20, n=4, scale=2.0)
    weight = torch.randn(value.shape, generator=torch.Generator().manual_seed(5), dtype=value.dtype)
    weight = weight.abs() / 16  # of one sign, so the sum over positions grows
    loss_scale = 2.0**16

    def run(features_dtype, offsets_dtype):
        o = offsets.to(offsets_dtype, copy=True).requires_grad_()
        out = fn(query.to(features_dtype), key.to(features_dtype), value.to(features_dtype), o)
        (out.double() * weight.to(device)).sum().mul(loss_scale).backward()
        return out, o.grad

    expected_out, expected_grad = run(torch.float64, torch.float64)
    assert expected_grad.abs().max() > 65504  # would overflow float16
    for dtype in (torch.float16, torch.bfloat16):
        out, grad = run(dtype, torch.float32)
        assert out.dtype == dtype and grad.dtype == torch.float32, dtype
        assert torch.isfinite(grad).all(), dtype
        torch.testing.assert_close(out.double(), expected_out, atol=0.05, rtol=0.05, msg=str(dtype))
        torch.testing.assert_close(grad.double(), expected_grad, atol=0, rtol=0.05, msg=str(dtype))


@requires_extension
def test_float32_offsets_with_low_precision_features_kernel_cpu():
    check_float32_offsets_with_low_precision_features(deformable_similarity_sampling, "cpu")


@requires_cuda
def test_float32_offsets_with_low_precision_features_kernel_cuda():
    check_float32_offsets_with_low_precision_features(deformable_similarity_sampling, "cuda")


def test_float32_offsets_with_low_precision_features_reference():
    check_float32_offsets_with_low_precision_features(
        deformable_similarity_sampling_reference, "cpu"
    )


def test_module_keeps_float32_offsets_with_half_features():
    # The float32 parameter is not cast to float16: its gradient stays finite under the loss scale
    # of check_float32_offsets_with_low_precision_features.
    query, key, value, offsets = _inputs("cpu", b=2, c=16, h=20, w=20, n=4, scale=2.0)
    weight = torch.randn(value.shape, generator=torch.Generator().manual_seed(5)).abs() / 16
    module = DeformableSimilaritySampling(num_points=4)
    with torch.no_grad():
        module.offsets.copy_(offsets)
    out = module(query.half(), key.half(), value.half())
    (out.float() * weight).sum().mul(2.0**16).backward()
    assert out.dtype == torch.float16
    assert module.offsets.grad.abs().max() > 65504 and torch.isfinite(module.offsets.grad).all()


@requires_extension
def test_empty_inputs():
    query, key, value, offsets = _inputs("cpu", b=0, h=4, w=5)
    assert deformable_similarity_sampling(query, key, value, offsets).shape == (0, 4, 4, 5)
    query, key, value, offsets = _inputs("cpu", b=1, h=0, w=5, per_position=True)
    assert deformable_similarity_sampling(query, key, value, offsets).shape == (1, 4, 0, 5)


@requires_extension
def test_deterministic_cpu(deterministic_algorithms):
    # The CPU backward writes without atomics: allowed in deterministic mode, and repeatable.
    inputs = _inputs("cpu", dtype=torch.float32, per_position=True)
    first, second = (_grads(deformable_similarity_sampling, inputs) for _ in range(2))
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


@requires_cuda
def test_deterministic_mode_refuses_cuda_backward(deterministic_algorithms):
    # The scatter of the key and value gradients uses atomics.
    with pytest.raises(RuntimeError, match="deterministic"):
        _grads(deformable_similarity_sampling, _inputs("cuda", dtype=torch.float32))


def test_fallback_to_reference(without_extension, caplog):
    inputs = _inputs("cpu")
    with caplog.at_level(logging.WARNING, logger=_ext.__name__):
        out = deformable_similarity_sampling(*inputs)
        deformable_similarity_sampling(*inputs)
    assert torch.equal(out, deformable_similarity_sampling_reference(*inputs))
    warnings = [r for r in caplog.records if "deformable_similarity_sampling" in r.message]
    assert len(warnings) == 1


def test_bad_inputs():
    query, key, value, offsets = _inputs("cpu")
    fn = deformable_similarity_sampling
    with pytest.raises(ValueError, match="query must be"):
        fn(query[0], key, value, offsets)
    with pytest.raises(ValueError, match="same shape"):
        fn(query, key[:, :2], value, offsets)
    with pytest.raises(ValueError, match="value"):
        fn(query, key, value[:, :, :3], offsets)
    with pytest.raises(ValueError, match="offsets must be"):
        fn(query, key, value, offsets[:, :1])
    with pytest.raises(ValueError, match="offsets must be"):
        fn(query, key, value, torch.zeros(2, 3, 5, 6, dtype=query.dtype))
    with pytest.raises(ValueError, match="offsets must be"):
        fn(query, key, value, torch.zeros(0, 2, dtype=query.dtype))
    with pytest.raises(TypeError, match="one dtype"):
        fn(query, key, value.float(), offsets)
    with pytest.raises(TypeError, match="one dtype"):  # float32 offsets only with half features
        fn(query, key, value, offsets.float())
    with pytest.raises(TypeError, match="floating point"):
        fn(query, key, value, offsets.long())
    with pytest.raises(ValueError, match="one device"):
        fn(query, key, value.to("meta"), offsets)
    with pytest.raises(ValueError, match="normalization"):
        fn(query, key, value, offsets, normalization="max")


def test_module():
    torch.manual_seed(0)
    module = DeformableSimilaritySampling(num_points=9, init="grid").double()
    expected = torch.tensor(
        [[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=torch.float64
    )
    assert torch.equal(module.offsets.detach(), expected)
    assert "num_points=9" in repr(module)
    query, key, value, _ = _inputs("cpu", n=9)
    module(query, key, value).square().sum().backward()
    # The locations are learned (Eq. 6): the loss reaches them.
    assert module.offsets.grad is not None and module.offsets.grad.abs().sum() > 0
    assert DeformableSimilaritySampling(num_points=5).offsets.shape == (5, 2)
    with pytest.raises(ValueError, match="square"):
        DeformableSimilaritySampling(num_points=5, init="grid")
    with pytest.raises(ValueError, match="init"):
        DeformableSimilaritySampling(init="uniform-ish")


@requires_extension
def test_kernel_checks_its_inputs():
    # Direct torch.ops calls skip the Python checks; the C++ op still refuses bad input.
    query, key, value, offsets = _inputs("cpu")
    with pytest.raises(RuntimeError, match="offsets must be"):
        torch.ops.vod_d2.deform_similarity_forward(query, key, offsets[:, :1])
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.vod_d2.deform_aggregate_forward(value[:, :4].float(), value, offsets)


def test_reference_indexes_large_half_maps():
    # 40 x 60 = 2400 positions: flat indices above 2048 are not representable in float16.
    value = torch.randn(1, 2, 40, 60)
    offsets = torch.tensor([[1.0, -2.0]])
    out = deformable_similarity_sampling_reference(
        value.half(), value.half(), value.half(), offsets.half()
    )
    assert torch.equal(out.float(), _shifted(value.half().float(), 1, -2))
