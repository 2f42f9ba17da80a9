"""Upsampling layers against nn.ConvTranspose2d shapes and explicit functional compositions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from leanconv.layers.conv import Conv2d, ConvTranspose2d
from leanconv.layers.transposed import (
    DepthwiseSeparableConvTranspose2d,
    MaxUnpoolConv2d,
    ResizeConv2d,
    make_conv,
)
from support import F64, bn_eval, kernels, ref_pad, small, small_pairs
from support import check_rejects_bad_input, check_traceable, randomize_norms


# ----------------------------------------------------------------------------- references


def conv2d_ref(x, weight, bias, stride, padding, dilation, groups=1):
    """F.conv2d with padding int/tuple/'valid'/'same' (TF rule) made explicit."""
    stride, dilation = _pair(stride), _pair(dilation)
    x = ref_pad(x, padding, weight.shape[-2:], stride, dilation)
    return F.conv2d(x, weight, bias, stride, 0, dilation, groups)


def conv_transpose2d_same_ref(x, weight, stride, dilation, groups):
    """Transposed conv with padding='same' as the adjoint of the 'same' conv (via autograd)."""
    stride, dilation = _pair(stride), _pair(dilation)
    n, _, h, w = x.shape
    out_channels = weight.shape[1] * groups
    u = torch.zeros(n, out_channels, h * stride[0], w * stride[1], dtype=x.dtype)
    _, vjp = torch.func.vjp(lambda t: conv2d_ref(t, weight, None, stride, "same", dilation, groups), u)
    return vjp(x)[0]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def norm_act_ref(y, norm, act):
    y = bn_eval(y, norm)
    return F.relu(y) if isinstance(act, nn.ReLU) else y


def dsconv_transpose_ref(m: DepthwiseSeparableConvTranspose2d, x, stride, padding, output_padding, dilation):
    """Explicit composition with the module's weights (eval mode)."""

    def transposed(t, weight, bias, groups):
        if padding == "same":
            y = conv_transpose2d_same_ref(t, weight, stride, dilation, groups)
            return y if bias is None else y + bias[:, None, None]
        pads = (0, 0) if padding == "valid" else padding
        return F.conv_transpose2d(t, weight, bias, stride, pads, output_padding, groups, dilation)

    if m.order == "depthwise_first":
        y = transposed(x, m.depthwise.weight, None, m.in_channels)
        y = norm_act_ref(y, m.norm, m.act)
        return F.conv2d(y, m.pointwise.weight, m.pointwise.bias)
    y = F.conv2d(x, m.pointwise.weight)
    y = norm_act_ref(y, m.norm, m.act)
    return transposed(y, m.depthwise.weight, m.depthwise.bias, m.out_channels)


# ---------------------------------------------------------------- DepthwiseSeparableConvTranspose2d


@settings(max_examples=40)
@given(
    c=st.integers(1, 4), o=st.integers(1, 5), m=small, kernel=kernels, stride=small, dilation=small,
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)), op_seed=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    h=st.integers(1, 7), w=st.integers(1, 7), order=st.sampled_from(["depthwise_first", "pointwise_first"]),
    norm=st.booleans(),
)
def test_dsconv_transpose_matches_conv_transpose_shape_and_reference(
    c, o, m, kernel, stride, dilation, padding, op_seed, h, w, order, norm
):
    if order == "pointwise_first":
        m = 1
    op = tuple(v % max(stride, dilation) for v in op_seed)
    out_hw = [(n - 1) * stride - 2 * p + dilation * (k - 1) + 1 + e for n, p, k, e in zip((h, w), padding, kernel, op)]
    assume(min(out_hw) >= 1)
    layer = DepthwiseSeparableConvTranspose2d(
        c, o, kernel, stride, padding, op, dilation=dilation, depth_multiplier=m, order=order,
        norm_layer=nn.BatchNorm2d if norm else None, act_layer=nn.ReLU if norm else None, dtype=F64,
    )
    randomize_norms(layer).eval()
    x = torch.randn(2, c, h, w, dtype=F64)
    dense = nn.ConvTranspose2d(c, o, kernel, stride, padding, op, dilation=dilation, dtype=F64)
    with torch.no_grad():
        y = layer(x)
        assert y.shape == dense(x).shape
        torch.testing.assert_close(y, dsconv_transpose_ref(layer, x, stride, padding, op, dilation))


@settings(max_examples=40)
@given(
    c=st.integers(1, 4), o=st.integers(1, 4), m=small, kernel=kernels, stride=small_pairs,
    dilation=small_pairs, h=st.integers(1, 9), w=st.integers(1, 9),
    order=st.sampled_from(["depthwise_first", "pointwise_first"]),
)
def test_dsconv_transpose_same_padding_gives_input_times_stride(c, o, m, kernel, stride, dilation, h, w, order):
    if order == "pointwise_first":
        m = 1
    layer = DepthwiseSeparableConvTranspose2d(
        c, o, kernel, stride, "same", dilation=dilation, depth_multiplier=m, order=order, dtype=F64
    )
    x = torch.randn(1, c, h, w, dtype=F64)
    with torch.no_grad():
        y = layer(x)
        assert y.shape == (1, o, h * stride[0], w * stride[1])
        torch.testing.assert_close(y, dsconv_transpose_ref(layer, x, stride, "same", 0, dilation))


@pytest.mark.parametrize("padding", [0, (1, 2), "valid"])
def test_dsconv_transpose_padding_forms(padding):
    layer = DepthwiseSeparableConvTranspose2d(3, 5, (3, 4), 2, padding, dtype=F64)
    x = torch.randn(2, 3, 5, 6, dtype=F64)
    pads = (0, 0) if padding == "valid" else _pair(padding)
    assert layer(x).shape == nn.ConvTranspose2d(3, 5, (3, 4), 2, pads, dtype=F64)(x).shape
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dsconv_transpose_ref(layer, x, 2, padding, 0, 1))


def test_dsconv_transpose_structure_and_state_dict():
    dw_first = DepthwiseSeparableConvTranspose2d(4, 6, 3, 2, depth_multiplier=2, norm_layer=nn.BatchNorm2d)
    assert isinstance(dw_first.depthwise, ConvTranspose2d) and isinstance(dw_first.pointwise, Conv2d)
    assert dw_first.depthwise.weight.shape == (4, 2, 3, 3) and dw_first.depthwise.groups == 4
    assert dw_first.depthwise.bias is None and dw_first.pointwise.bias.shape == (6,)
    assert dw_first.pointwise.weight.shape == (6, 8, 1, 1)
    assert dw_first.conv_norm_pairs == (("depthwise", "norm"),)
    assert set(dw_first.state_dict()) == {
        "depthwise.weight", "pointwise.weight", "pointwise.bias", "norm.weight", "norm.bias",
        "norm.running_mean", "norm.running_var", "norm.num_batches_tracked",
    }
    pw_first = DepthwiseSeparableConvTranspose2d(4, 6, 3, 2, order="pointwise_first", bias=False)
    assert pw_first.pointwise.weight.shape == (6, 4, 1, 1) and pw_first.pointwise.bias is None
    assert pw_first.depthwise.weight.shape == (6, 1, 3, 3) and pw_first.depthwise.groups == 6
    assert pw_first.depthwise.bias is None
    assert pw_first.conv_norm_pairs == (("pointwise", "norm"),)
    assert DepthwiseSeparableConvTranspose2d.conv_norm_pairs == (("depthwise", "norm"),)
    assert set(pw_first.state_dict()) == {"pointwise.weight", "depthwise.weight"}


@pytest.mark.parametrize("order", ["depthwise_first", "pointwise_first"])
def test_dsconv_transpose_conv_norm_pair_folds_exactly(order):
    """The declared pair really is conv -> norm: folding BN into that conv keeps the output."""
    layer = DepthwiseSeparableConvTranspose2d(3, 4, 3, 2, 1, 1, depth_multiplier=2 if order == "depthwise_first" else 1,
                                              order=order, norm_layer=nn.BatchNorm2d, dtype=F64)
    randomize_norms(layer).eval()
    ((conv_name, norm_name),) = layer.conv_norm_pairs
    conv, norm = getattr(layer, conv_name), getattr(layer, norm_name)
    x = torch.randn(2, 3, 5, 4, dtype=F64)
    with torch.no_grad():
        expected = layer(x)
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        if isinstance(conv, nn.ConvTranspose2d):  # weight (C, O/g, kh, kw): out channel c*(O/g) + j
            per_out = conv.weight.shape[1]
            conv.weight.mul_(scale.view(-1, per_out, 1, 1))
        else:
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift if conv.bias is None else conv.bias * scale + shift)
        setattr(layer, norm_name, nn.Identity())
        torch.testing.assert_close(layer(x), expected)


def test_dsconv_transpose_macs_closed_forms_and_cheaper_order():
    """FlopCounterMode (2 x MACs, transposed convs per input position) vs the docstring formulas."""
    c, o, k, s, h, w = 16, 16, 3, 2, 8, 8
    x = torch.randn(1, c, h, w)
    macs = {}
    for order in ("depthwise_first", "pointwise_first"):
        layer = DepthwiseSeparableConvTranspose2d(c, o, k, s, "same", order=order)
        with FlopCounterMode(display=False) as counter:
            layer(x)
        macs[order] = counter.get_total_flops() // 2
    assert macs["depthwise_first"] == c * k * k * h * w + c * o * (s * h) * (s * w)
    assert macs["pointwise_first"] == c * o * h * w + o * k * k * h * w
    assert macs["pointwise_first"] < macs["depthwise_first"] < c * o * k * k * h * w


def test_dsconv_transpose_float64_and_output_size_examples():
    layer = DepthwiseSeparableConvTranspose2d(2, 3, 4, 2, 1, dtype=F64)  # the classic x2 (k=4, s=2, p=1)
    assert layer(torch.randn(1, 2, 7, 5, dtype=F64)).shape == (1, 3, 14, 10)
    assert layer.depthwise.weight.dtype == F64 and layer.pointwise.weight.dtype == F64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth_multiplier=0), "depth_multiplier=0"),
        (dict(depth_multiplier=2, order="pointwise_first"), "depth_multiplier=2 must be 1"),
        (dict(order="sideways"), "order='sideways'"),
        (dict(in_channels=0), "in_channels=0"),
        (dict(out_channels=-1), "out_channels=-1"),
        (dict(kernel_size=0), "kernel_size=0"),
        (dict(stride=(1, 0)), "stride"),
        (dict(padding="full"), "padding='full'"),
        (dict(padding=-1), "padding=-1"),
        (dict(output_padding=2, stride=2), "output_padding=2"),
        (dict(output_padding=1, padding="same", stride=2), "output_padding=1 must be 0"),
        (dict(padding_mode="reflect"), "padding_mode='reflect'"),
        (dict(norm_layer=3), "norm_layer=3"),
        (dict(act_layer="relu"), "act_layer='relu'"),
    ],
)
def test_dsconv_transpose_invalid_arguments(kwargs, match):
    args = dict(in_channels=4, out_channels=6, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        DepthwiseSeparableConvTranspose2d(**args)


def test_dsconv_transpose_wrong_input():
    check_rejects_bad_input(DepthwiseSeparableConvTranspose2d(4, 6, 3), 4)


@pytest.mark.parametrize("order", ["depthwise_first", "pointwise_first"])
def test_dsconv_transpose_traceable(order):
    layer = DepthwiseSeparableConvTranspose2d(4, 6, 3, 2, "same", order=order, norm_layer=nn.BatchNorm2d,
                                              act_layer=nn.ReLU)
    check_traceable(randomize_norms(layer), torch.randn(2, 4, 5, 7), compile=order == "depthwise_first")


# ----------------------------------------------------------------------------- ResizeConv2d


@settings(max_examples=40)
@given(
    c=st.integers(1, 3), o=st.integers(1, 4), kernel=kernels, stride=small, dilation=small,
    scale=small_pairs, h=st.integers(1, 6), w=st.integers(1, 6),
    padding=st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 3),
                      st.tuples(st.integers(0, 3), st.integers(0, 3))),
)
def test_resize_conv_shape_and_nearest_reference(c, o, kernel, stride, dilation, scale, h, w, padding):
    pads = (0, 0) if padding == "valid" else padding
    if padding != "same":
        eff = [dilation * (k - 1) + 1 for k in kernel]
        assume(all(n * sc + 2 * p >= e for n, sc, p, e in zip((h, w), scale, _pair(pads), eff)))
    layer = ResizeConv2d(c, o, kernel, stride, padding, dilation, scale_factor=scale, conv=Conv2d, dtype=F64)
    x = torch.randn(2, c, h, w, dtype=F64)
    up = x.repeat_interleave(scale[0], dim=2).repeat_interleave(scale[1], dim=3)  # nearest, integer scale
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(y, conv2d_ref(up, layer.conv.weight, layer.conv.bias, stride, padding, dilation))
    if padding == "same":
        assert y.shape == (2, o, math.ceil(h * scale[0] / stride), math.ceil(w * scale[1] / stride))
    else:
        assert y.shape == nn.Conv2d(c, o, kernel, stride, pads, dilation, dtype=F64)(up).shape


def test_resize_conv_default_same_padding_scales_exactly():
    layer = ResizeConv2d(3, 5, conv=Conv2d)
    assert layer(torch.randn(2, 3, 7, 4)).shape == (2, 5, 14, 8)
    layer = ResizeConv2d(3, 5, kernel_size=4, scale_factor=(3, 2), conv=Conv2d)  # even kernel: TF-rule pad
    assert layer(torch.randn(1, 3, 5, 6)).shape == (1, 5, 15, 12)
    assert layer.scale_factor == (3, 2)
    assert set(layer.state_dict()) == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize("mode, align_corners", [("bilinear", False), ("bilinear", True), ("bicubic", None)])
def test_resize_conv_interpolating_modes(mode, align_corners):
    layer = ResizeConv2d(2, 3, 3, mode=mode, align_corners=align_corners, conv=Conv2d, dtype=F64)
    x = torch.randn(2, 2, 5, 4, dtype=F64)
    up = F.interpolate(x, size=(10, 8), mode=mode, align_corners=align_corners)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(up, layer.conv.weight, layer.conv.bias, padding=1))


def test_resize_conv_callable_with_options():
    layer = ResizeConv2d(4, 6, 3, conv=Conv2d, conv_options={"groups": 2}, bias=False, dtype=F64)
    assert layer.conv.weight.shape == (6, 2, 3, 3) and layer.conv.bias is None
    x = torch.randn(1, 4, 3, 5, dtype=F64)
    up = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(up, layer.conv.weight, None, padding=1, groups=2))


def test_resize_conv_reflect_padding_mode():
    layer = ResizeConv2d(2, 2, 3, padding_mode="reflect", conv=Conv2d, dtype=F64)
    x = torch.randn(1, 2, 3, 3, dtype=F64)
    up = F.pad(x.repeat_interleave(2, 2).repeat_interleave(2, 3), (1, 1, 1, 1), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(up, layer.conv.weight, layer.conv.bias))


def _require_kind(name: str):
    """Skip when the kinds registry cannot build ``name`` yet (written in parallel)."""
    kinds = pytest.importorskip("leanconv.kinds")
    if not hasattr(kinds, "create_conv2d"):
        pytest.skip("leanconv.kinds has no create_conv2d")
    try:
        kinds.create_conv2d(name, 2, 2, 3)
    except (AttributeError, ImportError) as exc:
        pytest.skip(f"kind {name!r} cannot be built yet: {exc}")


@pytest.mark.parametrize("cls", [ResizeConv2d, MaxUnpoolConv2d])
def test_kind_name_dense(cls):
    _require_kind("dense")
    layer = cls(3, 4, dtype=F64)
    assert isinstance(layer.conv, nn.Conv2d) and layer.conv.weight.shape == (4, 3, 3, 3)


def test_resize_conv_kind_name_dsconv():
    _require_kind("dsconv")
    layer = ResizeConv2d(3, 4, conv="dsconv", conv_options={"depth_multiplier": 2}, dtype=F64)
    assert layer.conv.depthwise.weight.shape == (6, 1, 3, 3)
    assert layer.conv.pointwise.weight.shape == (4, 6, 1, 1)
    x = torch.randn(1, 3, 4, 5, dtype=F64)
    up = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
    ref = F.conv2d(F.conv2d(up, layer.conv.depthwise.weight, layer.conv.depthwise.bias, padding=1, groups=3),
                   layer.conv.pointwise.weight, layer.conv.pointwise.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), ref)


def test_resize_conv_unknown_kind():
    _require_kind("dense")
    with pytest.raises(ValueError, match="kind='nonsense'"):
        ResizeConv2d(3, 4, conv="nonsense")


def _not_a_module(*args, **kwargs):
    return 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale_factor=0), "scale_factor=0"),
        (dict(scale_factor=(2, 0)), "scale_factor"),
        (dict(scale_factor=1.5), "scale_factor=1.5"),
        (dict(mode="area"), "mode='area'"),
        (dict(mode="nearest", align_corners=True), "align_corners=True must be None"),
        (dict(mode="bilinear", align_corners="yes"), "align_corners='yes'"),
        (dict(conv=3), "conv=3"),
        (dict(conv="resize_conv"), "does not upsample"),
        (dict(conv="dsconv_transpose"), "does not upsample"),
        (dict(conv=_not_a_module), "returned int"),
        (dict(conv_options=[("groups", 2)]), "conv_options"),
        (dict(in_channels=0), "in_channels=0"),
        (dict(out_channels=0), "out_channels=0"),
        (dict(kernel_size=0), "kernel_size=0"),
        (dict(padding="full"), "padding='full'"),
    ],
)
def test_resize_conv_invalid_arguments(kwargs, match):
    args = dict(in_channels=3, out_channels=4, conv=Conv2d) | kwargs
    with pytest.raises(ValueError, match=match):
        ResizeConv2d(**args)


def test_resize_conv_wrong_input():
    check_rejects_bad_input(ResizeConv2d(3, 4, conv=Conv2d), 3)


def test_resize_conv_traceable():
    check_traceable(ResizeConv2d(3, 4, 3, conv=Conv2d), torch.randn(2, 3, 5, 6), compile=True)
    check_traceable(ResizeConv2d(3, 4, 4, 2, mode="bilinear", align_corners=False, conv=Conv2d),
                    torch.randn(1, 3, 5, 7))


# ----------------------------------------------------------------------------- MaxUnpoolConv2d


@settings(max_examples=30)
@given(
    pool_k=st.tuples(st.integers(1, 3), st.integers(1, 3)), pool_s=st.one_of(st.none(), small_pairs),
    pad_seed=st.tuples(st.integers(0, 1), st.integers(0, 1)), h=st.integers(3, 9), w=st.integers(3, 9),
    kernel=kernels, c=st.integers(1, 3), o=st.integers(1, 3),
)
def test_max_unpool_conv_segnet_round_trip_reference(pool_k, pool_s, pad_seed, h, w, kernel, c, o):
    pool_p = tuple(min(p, k // 2) for p, k in zip(pad_seed, pool_k))
    layer = MaxUnpoolConv2d(c, o, kernel, pool_kernel_size=pool_k, pool_stride=pool_s, pool_padding=pool_p,
                            conv=Conv2d, dtype=F64)
    stride = pool_k if pool_s is None else pool_s
    x = torch.randn(2, c, h, w, dtype=F64)
    pooled, indices = F.max_pool2d(x, pool_k, stride, pool_p, return_indices=True)
    with torch.no_grad():
        y = layer(pooled, indices, output_size=(h, w))
        unpooled = F.max_unpool2d(pooled, indices, pool_k, stride, pool_p, output_size=(h, w))
        torch.testing.assert_close(y, conv2d_ref(unpooled, layer.conv.weight, layer.conv.bias, 1, "same", 1))
    assert y.shape == (2, o, h, w)
    # closed form of unpooling: every pooled value sits at its argmax, the rest is zero
    flat = torch.zeros(2, c, h * w, dtype=F64).scatter_(2, indices.flatten(2), pooled.flatten(2))
    torch.testing.assert_close(unpooled, flat.view(2, c, h, w))


def test_max_unpool_conv_default_size_and_structure():
    layer = MaxUnpoolConv2d(4, 2, conv=Conv2d)
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(torch.randn(1, 4, 8, 6))
    assert layer(pooled, indices).shape == (1, 2, 8, 6)
    assert isinstance(layer.unpool, nn.MaxUnpool2d) and layer.unpool.stride == (2, 2)
    assert set(layer.state_dict()) == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pool_kernel_size=0), "pool_kernel_size=0"),
        (dict(pool_stride=(0, 1)), "pool_stride"),
        (dict(pool_padding=2), "pool_padding=2 must be >= 0 and at most half"),
        (dict(pool_padding=-1), "pool_padding=-1"),
        (dict(conv="upsample-me"), "kind='upsample-me'|conv"),
        (dict(conv=None), "conv=None"),
        (dict(in_channels=0), "in_channels=0"),
    ],
)
def test_max_unpool_conv_invalid_arguments(kwargs, match):
    if isinstance(kwargs.get("conv"), str):
        _require_kind("dense")
    args = dict(in_channels=3, out_channels=4, conv=Conv2d) | kwargs
    with pytest.raises(ValueError, match=match):
        MaxUnpoolConv2d(**args)


def test_max_unpool_conv_wrong_inputs():
    layer = MaxUnpoolConv2d(3, 4, conv=Conv2d)
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"indices shape \(1, 3, 3, 4\) must equal the input shape"):
        layer(pooled, indices[..., :3, :])
    with pytest.raises(ValueError, match="indices dtype torch.int32 must be torch.int64"):
        layer(pooled, indices.int())
    with pytest.raises(ValueError, match="input has 2 channels, expected 3"):
        layer(pooled[:, :2], indices[:, :2])


def test_max_unpool_conv_traceable():
    layer = MaxUnpoolConv2d(3, 4, conv=Conv2d)
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(torch.randn(2, 3, 8, 10))
    check_traceable(layer, pooled, indices)


def test_make_conv_passes_every_argument():
    seen = {}

    def factory(in_channels, out_channels, kernel_size, **kwargs):
        seen.update(kwargs, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size)
        return nn.Identity()

    make_conv(factory, 3, 4, (3, 5), 2, "same", 2, False, "reflect", {"extra": 1}, None, F64)
    assert seen == dict(in_channels=3, out_channels=4, kernel_size=(3, 5), stride=2, padding="same", dilation=2,
                        bias=False, padding_mode="reflect", device=None, dtype=F64, extra=1)
