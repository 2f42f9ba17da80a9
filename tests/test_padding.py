"""The padding vocabulary against PyTorch's own modules, autograd and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leanconv.layers.conv import Conv2d, ConvTranspose2d
from leanconv.padding import conv_output_hw, resolve_padding, resolve_transposed_padding
from support import F64, MODES, check_rejects_bad_input, kernels, ref_pad, small_pairs

strides = dilations = small_pairs
sizes = st.tuples(st.integers(1, 17), st.integers(1, 17))


@given(kernels, strides, dilations, sizes, st.integers(0, 3))
def test_int_padding_shape_equals_nn_conv2d(kernel, stride, dilation, size, pad):
    h, w = size
    if any(n + 2 * pad < d * (k - 1) + 1 for n, k, d in zip(size, kernel, dilation)):
        return  # nn.Conv2d itself rejects an input smaller than the kernel
    x = torch.randn(1, 2, h, w)
    ours = Conv2d(2, 3, kernel, stride, pad, dilation)(x)
    ref = nn.Conv2d(2, 3, kernel, stride, pad, dilation)(x)
    assert ours.shape == ref.shape
    assert conv_output_hw((h, w), kernel, stride, pad, dilation) == tuple(ref.shape[-2:])


@given(kernels, strides, dilations, sizes)
def test_same_matches_tf_rule_numerically(kernel, stride, dilation, size):
    x = torch.randn(2, 3, *size, dtype=F64)
    conv = Conv2d(3, 4, kernel, stride, "same", dilation, bias=False, dtype=F64)
    y = conv(x)
    assert tuple(y.shape[-2:]) == tuple(math.ceil(n / s) for n, s in zip(size, stride))
    # TF 'same' written independently (support.tf_same_pads): explicit pad, then an unpadded conv
    ref = F.conv2d(ref_pad(x, "same", kernel, stride, dilation), conv.weight, None, stride, 0, dilation)
    torch.testing.assert_close(y, ref)
    assert conv_output_hw(size, kernel, stride, "same", dilation) == tuple(y.shape[-2:])


@given(kernels, dilations, sizes, st.sampled_from(MODES))
@settings(max_examples=40)
def test_same_stride1_equals_pytorch_same(kernel, dilation, size, mode):
    if mode == "reflect" and any(d * (k - 1) - d * (k - 1) // 2 >= n for n, k, d in zip(size, kernel, dilation)):
        return  # reflect padding must be smaller than the input
    if mode == "circular" and any(d * (k - 1) > n for n, k, d in zip(size, kernel, dilation)):
        return
    x = torch.randn(1, 2, *size, dtype=F64)
    ref = nn.Conv2d(2, 3, kernel, 1, "same", dilation, padding_mode=mode, dtype=F64)
    ours = Conv2d(2, 3, kernel, 1, "same", dilation, padding_mode=mode, dtype=F64)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x))


def test_same_is_static_whenever_possible():
    assert resolve_padding("same", (3, 5), (1, 1), (2, 1)) == (2, 2)
    assert type(Conv2d(2, 2, 3, 1, "same")) is Conv2d and not Conv2d(2, 2, 3, 1, "same").dynamic_same
    assert resolve_padding("same", (3, 3), (2, 1), (1, 1)) is None  # depends on the input size
    assert resolve_padding("same", (2, 2), (1, 1), (1, 1)) is None  # asymmetric: one extra pixel
    assert resolve_padding("valid", (3, 3), (2, 2), (1, 1)) == (0, 0)


@given(kernels, strides, dilations, st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_transposed_same_is_adjoint_of_conv_same(kernel, stride, dilation, size):
    """Transposed 'same' = the input gradient of conv 'same' (checked with autograd)."""
    conv = Conv2d(3, 2, kernel, stride, "same", dilation, bias=False, dtype=F64)
    conv_t = ConvTranspose2d(2, 3, kernel, stride, "same", dilation=dilation, bias=False, dtype=F64)
    conv_t.weight.data.copy_(conv.weight.data)
    x = torch.randn(1, 3, size[0] * stride[0], size[1] * stride[1], dtype=F64, requires_grad=True)
    y = conv(x)
    assert tuple(y.shape[-2:]) == size
    g = torch.randn_like(y)
    (grad_x,) = torch.autograd.grad(y, x, g)
    out = conv_t(g)
    assert tuple(out.shape[-2:]) == (size[0] * stride[0], size[1] * stride[1])
    torch.testing.assert_close(out, grad_x)


@given(kernels, strides, dilations, sizes, st.integers(0, 3), st.integers(0, 2))
def test_transposed_int_padding_equals_nn(kernel, stride, dilation, size, pad, out_pad):
    out_pad = out_pad if all(out_pad < max(s, d) for s, d in zip(stride, dilation)) else 0
    out = [(n - 1) * s - 2 * pad + d * (k - 1) + 1 + out_pad for n, k, s, d in zip(size, kernel, stride, dilation)]
    if min(out) <= 0:
        return  # nn.ConvTranspose2d rejects it too
    ref = nn.ConvTranspose2d(2, 3, kernel, stride, pad, out_pad, dilation=dilation)
    ours = ConvTranspose2d(2, 3, kernel, stride, pad, out_pad, dilation=dilation)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, *size)
    torch.testing.assert_close(ours(x), ref(x))
    assert list(ours(x).shape[-2:]) == out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(padding="full"), "padding='full' must be an int"),
        (dict(padding=-1), "padding=-1 must be non-negative"),
        (dict(padding=(1, 2, 3)), "padding=.* must be an int or a pair"),
        (dict(stride=0), "stride=0 must be >= 1"),
        (dict(stride=-2), "stride=-2 must be >= 1"),
        (dict(dilation=(1, 0)), "dilation=.* must be >= 1"),
        (dict(kernel_size=0), "kernel_size=0 must be >= 1"),
        (dict(padding_mode="mirror"), "padding_mode='mirror' must be one of"),
        (dict(groups=3), "in_channels=4 must be divisible by groups=3"),
        (dict(out_channels=6, groups=4), "out_channels=6 must be divisible by groups=4"),
        (dict(in_channels=0), "in_channels=0 must be >= 1"),
        (dict(kernel_size=2.5), "kernel_size=2.5 must be an int"),
    ],
)
def test_invalid_conv_arguments(kwargs, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Conv2d(**args)


def test_invalid_transposed_arguments():
    with pytest.raises(ValueError, match="output_padding=2 must be >= 0 and smaller than stride"):
        ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="output_padding=1 must be 0 with padding='same'"):
        ConvTranspose2d(2, 2, 3, stride=2, padding="same", output_padding=1)
    with pytest.raises(ValueError, match="padding_mode='reflect' must be 'zeros' for a transposed"):
        ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="output_padding"):
        resolve_transposed_padding(0, -1, (3, 3), (2, 2), (1, 1))


def test_wrong_input_rank_and_channels():
    check_rejects_bad_input(Conv2d(4, 8, 3), 4)
