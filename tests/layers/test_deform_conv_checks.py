"""
The checks before torchvision's deformable conv reads memory (vod_d2.layers.DeformConv2d and
DeformConv): NaN offsets sent torchvision's CPU kernel outside its input, the segmentation fault
of an FPN STSN that had diverged.
"""

import pytest
import torch
import torchvision

from vod_d2.layers import DeformConv2d, check_deform_conv2d_inputs


def _layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    return DeformConv2d(4, 6, 3, **{"padding": 1, **kwargs})


def check_same_as_torchvision(device):
    # Output sizes of a 7x9 input: (7 + 2 p - d (3 - 1) - 1) // s + 1.
    for kwargs, out_hw in (({}, (7, 9)), ({"stride": 2}, (4, 5)), ({"dilation": 2}, (5, 7))):
        layer = _layer(**kwargs).double().to(device)
        reference = torchvision.ops.DeformConv2d(4, 6, 3, **{"padding": 1, **kwargs})
        reference.load_state_dict(layer.state_dict())
        reference = reference.double().to(device)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 4, 7, 9, generator=g, dtype=torch.float64).to(device)
        # Offsets of up to 3 cells, many of them outside the map.
        offset = (torch.rand(2, 18, *out_hw, generator=g, dtype=torch.float64) * 6 - 3).to(device)
        for module in (layer, reference):
            module.zero_grad()
        inputs = [x.clone().requires_grad_(), offset.clone().requires_grad_()]
        expected = [x.clone().requires_grad_(), offset.clone().requires_grad_()]
        out, ref = layer(*inputs), reference(*expected)
        assert torch.equal(out, ref), kwargs
        out.sum().backward()
        ref.sum().backward()
        for a, b in zip(inputs + [layer.weight], expected + [reference.weight]):
            assert torch.equal(a.grad, b.grad), kwargs


def test_same_as_torchvision_cpu():
    check_same_as_torchvision("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_as_torchvision_cuda():
    check_same_as_torchvision("cuda")


@pytest.mark.parametrize("where", ["one", "all"])
def test_nan_offsets_raise_instead_of_reading_outside_the_input(where):
    layer = _layer()
    x = torch.randn(1, 4, 6, 8)
    offset = torch.zeros(1, 18, 6, 8)
    if where == "one":
        offset[0, 5, 2, 3] = float("nan")
    else:
        offset.fill_(float("nan"))
    count = 1 if where == "one" else offset.numel()
    with pytest.raises(FloatingPointError, match=f"{count} of {offset.numel()} offset values"):
        layer(x, offset)


def test_infinite_offsets_sample_zero():
    # torchvision's bounds test rejects +-inf (unlike NaN), so they are allowed and read nothing.
    layer = _layer()
    x = torch.randn(1, 4, 6, 8)
    offset = torch.full((1, 18, 6, 8), float("inf"))
    offset[:, 1::2] = -float("inf")
    assert torch.equal(layer(x, offset), layer.bias.view(1, -1, 1, 1).expand(1, 6, 6, 8))


@pytest.mark.parametrize(
    "x_shape, offset_shape, message",
    [
        ((2, 4, 6, 8), (1, 18, 6, 8), r"offset \(1, 18, 6, 8\) does not fit input \(2, 4, 6, 8\)"),
        ((1, 4, 6, 8), (1, 18, 3, 4), r"it must be \(1, 2 \* G \* 3 \* 3, 6, 8\)"),
        ((1, 4, 6, 8), (1, 3 * 18, 6, 8), "with G dividing the 4 input channels"),
        ((1, 4, 6, 8), (1, 17, 6, 8), "does not fit"),
        ((1, 3, 6, 8), (1, 18, 6, 8), r"weight \(6, 4, 3, 3\) must be"),
        ((4, 6, 8), (1, 18, 6, 8), "must both be 4-D"),
    ],
)
def test_shapes_torchvision_cannot_take_are_named(x_shape, offset_shape, message):
    layer = _layer()
    with pytest.raises(ValueError, match=message):
        layer(torch.randn(x_shape), torch.zeros(offset_shape))


def test_dtypes_must_match():
    with pytest.raises(ValueError, match="offset torch.float64 on cpu"):
        _layer()(torch.randn(1, 4, 6, 8), torch.zeros(1, 18, 6, 8, dtype=torch.float64))


def test_nan_mask_is_refused():
    x, offset, mask = torch.randn(1, 4, 6, 8), torch.zeros(1, 18, 6, 8), torch.ones(1, 9, 6, 8)
    weight = torch.randn(6, 4, 3, 3)
    check_deform_conv2d_inputs(x, offset, weight, padding=1, mask=mask)
    mask[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="1 of 432 mask values are NaN"):
        check_deform_conv2d_inputs(x, offset, weight, padding=1, mask=mask)


def test_the_detectron2_layout_layer_checks_its_offsets_too():
    from vod_d2.layers import DeformConv

    layer = DeformConv(4, 6, 3, padding=1)
    offset = torch.zeros(1, 18, 5, 5)
    offset[0, 3, 2, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="1 of 450 offset values are NaN"):
        layer(torch.randn(1, 4, 5, 5), offset)
