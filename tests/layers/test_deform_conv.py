"""
DeformConv (torchvision's deform_conv2d with detectron2's parameters) against a bilinear
reference written here, F.conv2d at zero offsets, and detectron2's own CUDA op.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ModulatedDeformConv as D2ModulatedDeformConv
from detectron2.layers.deform_conv import DeformConv as D2DeformConv
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock

from vod_d2.layers import DeformConv, use_torchvision_deform_convs

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _bilinear(image, y, x):
    """
    image (N, G, Cg, H, W) sampled at (y, x) (N, G, K, Ho, Wo) -> (N, G, Cg, K, Ho, Wo): zero
    for a point with y <= -1, y >= H, x <= -1 or x >= W, else the bilinear mix of the corners
    inside the image (a corner outside reads zero), as Dai et al.'s kernels do.
    """
    n, g, cg, h, w = image.shape
    flat = image.reshape(n, g, cg, h * w)
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    out = 0
    for dy, dx in itertools.product((0, 1), (0, 1)):
        yc, xc = y.floor() + dy, x.floor() + dx
        weight = (1 - (y - yc).abs()) * (1 - (x - xc).abs())
        valid = inside & (yc >= 0) & (yc <= h - 1) & (xc >= 0) & (xc <= w - 1)
        index = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long()
        gathered = flat.gather(3, index.reshape(n, g, 1, -1).expand(n, g, cg, -1))
        out = out + gathered.reshape(n, g, cg, *index.shape[2:]) * (weight * valid)[:, :, None]
    return out


def deform_conv_reference(x, offset, weight, bias, stride, padding, dilation, mask=None):
    """
    The deformable convolution from its definition (Dai et al. 2017, Eq. 2; Zhu et al. 2019,
    Eq. 1): out(p0) = sum_k w_k x(p0 s - pad + p_k d + dp_k) m_k, offsets (dy, dx) per kernel
    point k of each offset group, the input channels split into the offset groups.
    """
    n, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups, k = c // c_per_group, kh * kw
    ho, wo = offset.shape[-2:]
    g = offset.shape[1] // (2 * k)
    offset = offset.reshape(n, g, k, 2, ho, wo)
    mask = torch.ones_like(offset[:, :, :, 0]) if mask is None else mask.reshape(n, g, k, ho, wo)
    ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
    base_y = torch.arange(ho) * stride - padding
    base_x = torch.arange(wo) * stride - padding
    y = base_y[:, None] + (ky.reshape(k) * dilation)[:, None, None] + offset[:, :, :, 0]
    x_ = base_x[None, :] + (kx.reshape(k) * dilation)[:, None, None] + offset[:, :, :, 1]
    columns = _bilinear(x.reshape(n, g, c // g, h, w), y, x_) * mask[:, :, None]
    columns = columns.reshape(n, groups, c_per_group, k, ho, wo)
    kernels = weight.reshape(groups, c_out // groups, c_per_group, k)
    out = torch.einsum("ngckhw,gock->ngohw", columns, kernels).reshape(n, c_out, ho, wo)
    return out if bias is None else out + bias[:, None, None]


CASES = [
    # stride, padding, dilation, groups, deformable_groups, modulated, bias
    (1, 1, 1, 1, 1, False, False),
    (1, 1, 1, 1, 2, False, False),
    (2, 1, 1, 2, 1, True, True),
    (1, 2, 2, 2, 4, True, False),
    (2, 0, 1, 1, 4, False, True),
]


def _inputs(case, device, dtype=torch.float64, seed=0, shape=(2, 8, 6, 7, 9)):
    """A layer of ``case`` with random weights, and its input (N, C, H, W), offsets and mask."""
    stride, padding, dilation, groups, deformable_groups, modulated, bias = case
    n, c, c_out, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    layer = DeformConv(c, c_out, 3, stride, padding, dilation, groups, deformable_groups, bias=bias)
    layer = layer.to(device, dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=dtype))
        if bias:
            layer.bias.copy_(torch.randn(c_out, generator=gen, dtype=dtype))
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    ho = (h + 2 * padding - 2 * dilation - 1) // stride + 1
    wo = (w + 2 * padding - 2 * dilation - 1) // stride + 1
    # Shifts of up to a few pixels: some samples fall outside the input, some straddle it.
    offset = 2.5 * torch.randn(n, 2 * deformable_groups * 9, ho, wo, generator=gen, dtype=dtype)
    mask = None
    if modulated:
        mask = torch.rand(n, deformable_groups * 9, ho, wo, generator=gen, dtype=dtype)
    to = dict(device=device)
    return layer, x.to(**to), offset.to(**to), None if mask is None else mask.to(**to)


def check_deform_conv_matches_the_reference(device):
    for case in CASES:
        layer, x, offset, mask = _inputs(case, device)
        stride, padding, dilation = case[:3]
        out = layer(x, offset, mask)
        expected = deform_conv_reference(
            *(t.cpu() if t is not None else None for t in (x, offset, layer.weight, layer.bias)),
            stride,
            padding,
            dilation,
            None if mask is None else mask.cpu(),
        )
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10, msg=str(case))


def check_zero_offsets_are_a_plain_convolution(device):
    for case in CASES:
        layer, x, offset, mask = _inputs(case, device)
        stride, padding, dilation, groups = case[:4]
        out = layer(x, torch.zeros_like(offset), None if mask is None else torch.ones_like(mask))
        expected = F.conv2d(x, layer.weight, layer.bias, stride, padding, dilation, groups)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=str(case))


def check_gradients(device):
    for case in CASES[2:4]:  # groups, offset groups, modulation, bias
        layer, x, offset, mask = _inputs(case, device, shape=(1, 4, 2, 4, 5))
        inputs = [t.requires_grad_() for t in (x, offset, mask) if t is not None]
        params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        assert torch.autograd.gradcheck(
            lambda *args: layer(*args[:2], args[2] if mask is not None else None),
            inputs,
            eps=1e-6,
            atol=1e-5,
        ), case
        layer(x, offset, mask).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), case


def test_deform_conv_matches_the_reference_cpu():
    check_deform_conv_matches_the_reference("cpu")


@requires_gpu
def test_deform_conv_matches_the_reference_cuda():
    check_deform_conv_matches_the_reference("cuda")


def test_zero_offsets_are_a_plain_convolution_cpu():
    check_zero_offsets_are_a_plain_convolution("cpu")


@requires_gpu
def test_zero_offsets_are_a_plain_convolution_cuda():
    check_zero_offsets_are_a_plain_convolution("cuda")


def test_gradients_cpu():
    check_gradients("cpu")


@requires_gpu
def test_gradients_cuda():
    check_gradients("cuda")


@requires_gpu
@pytest.mark.parametrize("modulated", [False, True])
def test_detectron2s_cuda_op_computes_the_same(modulated):
    # detectron2's own layer, taken over: the same parameters give the same outputs.
    for case in CASES:
        if case[-1] and not modulated:
            continue  # detectron2's DeformConv has no bias
        stride, padding, dilation, groups, deformable_groups = case[:5]
        d2_type = D2ModulatedDeformConv if modulated else D2DeformConv
        d2 = d2_type(8, 6, 3, stride, padding, dilation, groups, deformable_groups, bias=case[-1])
        d2 = d2.cuda()
        ours = DeformConv.from_detectron2(d2)
        _, x, offset, mask = _inputs(case, "cuda", dtype=torch.float32)
        if modulated:
            mask = torch.rand_like(offset[:, : offset.shape[1] // 2])
        args = (x, offset, mask) if modulated else (x, offset)
        try:
            expected = d2(*args)
        except RuntimeError as e:
            pytest.skip(f"detectron2's CUDA kernels are not built: {e}")
        torch.testing.assert_close(ours(*args), expected, rtol=1e-4, atol=1e-4, msg=str(case))


@pytest.mark.parametrize("modulated", [False, True])
def test_a_detectron2_block_keeps_its_checkpoint_layout_and_runs_on_cpu(modulated):
    torch.manual_seed(0)
    block = DeformBottleneckBlock(
        16, 32, bottleneck_channels=8, stride=2, num_groups=2, norm="BN",
        deform_modulated=modulated, deform_num_groups=2,
    )  # fmt: skip
    block.conv2_offset.weight.data.normal_(std=0.5)  # offsets that move the samples
    state = {k: v.clone() for k, v in block.state_dict().items()}
    parameters = dict(block.named_parameters())
    with pytest.raises(NotImplementedError):
        block(torch.randn(1, 16, 9, 9))  # detectron2's op refuses the CPU
    use_torchvision_deform_convs(block)
    assert isinstance(block.conv2, DeformConv)
    assert {k: v.shape for k, v in block.state_dict().items()} == {
        k: v.shape for k, v in state.items()
    }
    assert dict(block.named_parameters()).keys() == parameters.keys()
    for name, p in block.named_parameters():
        assert p is parameters[name], name  # the same tensors: a frozen block stays frozen
    block.load_state_dict(state)
    assert block.eval()(torch.randn(1, 16, 9, 9)).shape == (1, 32, 5, 5)
