"""Depthwise, pointwise, depthwise separable and Tucker-2 layers.

References: nn.Conv2d output shapes, explicit float64 F.conv2d compositions with the layers'
own weights (padding written out here, TF rule for 'same'), and closed forms (einsum).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leanconv.layers.conv import Conv2d
from leanconv.layers.separable import (
    DepthwiseConv2d,
    DepthwiseSeparableConv2d,
    PointwiseConv2d,
    Tucker2Conv2d,
)
from support import F64, bn_eval, config_args, config_out_hw, conv_config, ref_pad, small
from support import check_device_and_dtype, check_rejects_bad_input, check_traceable, randomize_norms


# ----------------------------------------------------------------------------- depthwise


@given(cfg=conv_config(), c=st.integers(1, 4), m=st.integers(1, 3))
@settings(max_examples=40)
def test_depthwise_shape_matches_conv2d(cfg, c, m):
    layer = DepthwiseConv2d(c, c * m, *config_args(cfg), padding_mode=cfg["mode"])
    assert isinstance(layer, nn.Conv2d) and isinstance(layer, Conv2d)
    assert layer.groups == c and layer.depth_multiplier == m
    assert tuple(layer.weight.shape) == (c * m, 1, *cfg["kernel"])
    y = layer(torch.randn(2, c, *cfg["hw"]))
    assert tuple(y.shape) == (2, c * m, *config_out_hw(cfg))


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, mode",
    [
        (3, 1, 1, 1, "zeros"),
        ((3, 5), 2, "same", (2, 1), "zeros"),
        ((4, 3), (2, 3), "same", 1, "reflect"),
        (5, 1, (2, 1), 2, "circular"),
        (3, 2, "valid", 1, "replicate"),
    ],
)
def test_depthwise_matches_functional(kernel, stride, padding, dilation, mode):
    layer = DepthwiseConv2d(3, 6, kernel, stride, padding, dilation, padding_mode=mode, dtype=F64)
    k, s, d = (layer.kernel_size, layer.stride, layer.dilation)
    x = torch.randn(2, 3, 13, 10, dtype=F64)
    ref = F.conv2d(ref_pad(x, padding, k, s, d, mode), layer.weight, layer.bias, s, 0, d, groups=3)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_depthwise_channel_layout_never_mixes_channels():
    """Output channel c*m + j only sees input channel c (closed form, no conv call)."""
    layer = DepthwiseConv2d(3, 6, 1, bias=False, dtype=F64)
    x = torch.randn(1, 3, 4, 5, dtype=F64)
    w = layer.weight[:, 0, 0, 0]
    expected = x.repeat_interleave(2, dim=1) * w.view(1, 6, 1, 1)
    torch.testing.assert_close(layer(x), expected)


# ----------------------------------------------------------------------------- pointwise


@given(c=st.integers(1, 6), o=st.integers(1, 6), s=small, g=st.sampled_from([1, 2]),
       h=st.integers(1, 12), w=st.integers(1, 12))
def test_pointwise_is_a_per_pixel_channel_mix(c, o, s, g, h, w):
    c, o = c * g, o * g
    layer = PointwiseConv2d(c, o, s, g, dtype=F64)
    assert tuple(layer.weight.shape) == (o, c // g, 1, 1)
    x = torch.randn(2, c, h, w, dtype=F64)
    # closed form: a block-diagonal matrix applied at every s-th pixel
    mix = torch.block_diag(*layer.weight[:, :, 0, 0].split(o // g, dim=0))
    expected = torch.einsum("oc,nchw->nohw", mix, x[:, :, ::s, ::s]) + layer.bias.view(1, o, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- separable


@given(cfg=conv_config(), c=st.integers(1, 4), o=st.integers(1, 5), m=st.integers(1, 2))
@settings(max_examples=40)
def test_separable_shape_matches_conv2d(cfg, c, o, m):
    layer = DepthwiseSeparableConv2d(c, o, *config_args(cfg), padding_mode=cfg["mode"], depth_multiplier=m)
    y = layer(torch.randn(1, c, *cfg["hw"]))
    assert tuple(y.shape) == (1, o, *config_out_hw(cfg))


@given(cfg=conv_config(), m=st.integers(1, 2), bias=st.booleans())
@settings(max_examples=25)
def test_separable_matches_functional_composition(cfg, m, bias):
    layer = DepthwiseSeparableConv2d(
        3, 5, *config_args(cfg), bias, cfg["mode"],
        depth_multiplier=m, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU, dtype=F64,
    )
    randomize_norms(layer).eval()
    k, s, p, d = config_args(cfg)
    x = torch.randn(2, 3, *cfg["hw"], dtype=F64)
    dw = F.conv2d(ref_pad(x, p, k, s, d, cfg["mode"]), layer.depthwise.weight, None,
                  s, 0, d, groups=3)
    ref = F.conv2d(F.relu(bn_eval(dw, layer.norm)), layer.pointwise.weight, layer.pointwise.bias)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


@given(cfg=conv_config(), m=st.integers(1, 2), bias=st.booleans())
@settings(max_examples=25)
def test_pointwise_first_separable_matches_functional_composition_and_fuses(cfg, m, bias):
    import leanconv

    layer = DepthwiseSeparableConv2d(
        3, 5, *config_args(cfg), bias, cfg["mode"],
        depth_multiplier=m, norm_layer=nn.BatchNorm2d, dtype=F64, order="pointwise_first",
    )
    randomize_norms(layer).eval()
    assert layer.pointwise.out_channels == 5 * m and layer.depthwise.groups == 5
    k, s, p, d = config_args(cfg)
    x = torch.randn(2, 3, *cfg["hw"], dtype=F64)
    mixed = bn_eval(F.conv2d(x, layer.pointwise.weight), layer.norm)
    ref = F.conv2d(ref_pad(mixed, p, k, s, d, cfg["mode"]), layer.depthwise.weight, layer.depthwise.bias,
                   s, 0, d, groups=5)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)
    fused = leanconv.fuse(nn.Sequential(layer))  # BN folds into the pointwise stage before it
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in fused.modules())
    torch.testing.assert_close(fused(x), ref, rtol=1e-9, atol=1e-9)


def test_separable_structure_and_state_dict_keys():
    layer = DepthwiseSeparableConv2d(4, 6, 3, 2, "same", depth_multiplier=2,
                                     norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU6)
    assert isinstance(layer.depthwise, DepthwiseConv2d) and isinstance(layer.pointwise, PointwiseConv2d)
    assert layer.depthwise.groups == 4 and layer.depthwise.out_channels == 8
    assert layer.depthwise.bias is None and layer.pointwise.bias is not None
    assert layer.depthwise.stride == (2, 2) and layer.pointwise.stride == (1, 1)
    assert DepthwiseSeparableConv2d.conv_norm_pairs == (("depthwise", "norm"),)
    assert {k.split(".")[0] for k in layer.state_dict()} == {"depthwise", "norm", "pointwise"}
    assert "pointwise.bias" in layer.state_dict() and "depthwise.bias" not in layer.state_dict()
    bare = DepthwiseSeparableConv2d(4, 6, 3)
    assert isinstance(bare.norm, nn.Identity) and isinstance(bare.act, nn.Identity)
    # params: C*m*k*k + C*m*O + O
    assert sum(p.numel() for p in bare.parameters()) == 4 * 9 + 4 * 6 + 6


def test_atrous_separable_keeps_resolution():
    """Dilated depthwise stage (DeepLabv3+): 'same' keeps H x W, field of view grows."""
    layer = DepthwiseSeparableConv2d(4, 8, 3, padding="same", dilation=6)
    assert layer.depthwise.dilation == (6, 6)
    assert layer(torch.randn(1, 4, 33, 20)).shape == (1, 8, 33, 20)


# ----------------------------------------------------------------------------- Tucker-2


@given(cfg=conv_config(), c=st.integers(1, 4), o=st.integers(1, 5),
       ranks=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
@settings(max_examples=40)
def test_tucker2_shape_matches_conv2d(cfg, c, o, ranks):
    layer = Tucker2Conv2d(c, o, *config_args(cfg), padding_mode=cfg["mode"], ranks=ranks)
    r_in, r_out = ranks or (c, o)
    assert tuple(layer.core.weight.shape) == (r_out, r_in, *cfg["kernel"])
    y = layer(torch.randn(1, c, *cfg["hw"]))
    assert tuple(y.shape) == (1, o, *config_out_hw(cfg))


@pytest.mark.parametrize("padding, stride, mode", [(1, 1, "zeros"), ("same", 2, "reflect"), ((0, 2), (1, 2), "zeros")])
def test_tucker2_matches_functional_composition(padding, stride, mode):
    layer = Tucker2Conv2d(5, 7, (3, 5), stride, padding, (1, 2), padding_mode=mode, ranks=(2, 3), dtype=F64)
    assert layer.reduce.bias is None and layer.core.bias is None and layer.expand.bias is not None
    x = torch.randn(2, 5, 12, 15, dtype=F64)
    k, s, d = layer.core.kernel_size, layer.core.stride, layer.core.dilation
    z = F.conv2d(x, layer.reduce.weight)
    z = F.conv2d(ref_pad(z, padding, k, s, d, mode), layer.core.weight, None, s, 0, d)
    ref = F.conv2d(z, layer.expand.weight, layer.expand.bias)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_tucker2_full_rank_holds_any_dense_conv():
    """ranks=None is full rank: identity 1x1 stages around a dense core give that dense conv."""
    layer = Tucker2Conv2d(4, 6, 3, 2, 1, dtype=F64)
    assert layer.ranks == (4, 6)
    dense = torch.randn(6, 4, 3, 3, dtype=F64)
    with torch.no_grad():
        layer.reduce.weight.copy_(torch.eye(4, dtype=F64).view(4, 4, 1, 1))
        layer.core.weight.copy_(dense)
        layer.expand.weight.copy_(torch.eye(6, dtype=F64).view(6, 6, 1, 1))
    x = torch.randn(1, 4, 9, 8, dtype=F64)
    torch.testing.assert_close(layer(x), F.conv2d(x, dense, layer.expand.bias, 2, 1))


# ----------------------------------------------------------------------------- device / dtype


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: DepthwiseConv2d(2, 4, 3, **kw),
        lambda **kw: PointwiseConv2d(2, 4, **kw),
        lambda **kw: DepthwiseSeparableConv2d(2, 4, 3, norm_layer=nn.BatchNorm2d, **kw),
        lambda **kw: Tucker2Conv2d(2, 4, 3, ranks=(1, 2), **kw),
    ],
)
def test_device_and_dtype_reach_every_parameter(make):
    check_device_and_dtype(make)


# ----------------------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: DepthwiseConv2d(4, 10, 3),
         r"out_channels=10 must be a multiple of in_channels=4 \(depth multiplier = out/in\)"),
        (lambda: DepthwiseConv2d(0, 4, 3), r"in_channels=0 must be >= 1"),
        (lambda: DepthwiseConv2d(4, 8, 0), r"kernel_size=0 must be >= 1"),
        (lambda: DepthwiseConv2d(4, 8, 3, stride=-1), r"stride=-1 must be >= 1"),
        (lambda: DepthwiseConv2d(4, 8, 3, padding="full"), r"padding='full' must be"),
        (lambda: DepthwiseConv2d(4, 8, 3, padding=-1), r"padding=-1 must be non-negative"),
        (lambda: DepthwiseConv2d(4, 8, 3, padding_mode="mirror"), r"padding_mode='mirror'"),
        (lambda: PointwiseConv2d(4, 6, groups=4), r"out_channels=6 must be divisible by groups=4"),
        (lambda: PointwiseConv2d(4, 6, stride=0), r"stride=0 must be >= 1"),
        (lambda: DepthwiseSeparableConv2d(4, 8, 3, depth_multiplier=0), r"depth_multiplier=0 must be >= 1"),
        (lambda: DepthwiseSeparableConv2d(4, 8, 3, depth_multiplier=1.5), r"depth_multiplier=1.5 must be an int"),
        (lambda: DepthwiseSeparableConv2d(4, 8, 3, stride=(1, -2)), r"stride=\(1, -2\) must be >= 1"),
        (lambda: DepthwiseSeparableConv2d(4, 8, 3, padding="half"), r"padding='half' must be"),
        (lambda: DepthwiseSeparableConv2d(4, 0, 3), r"out_channels=0 must be >= 1"),
        (lambda: DepthwiseSeparableConv2d(4, 8, 3, norm_layer="bn"), r"norm_layer='bn' must be a callable"),
        (lambda: DepthwiseSeparableConv2d(4, 8, 3, act_layer=3), r"act_layer=3 must be a callable"),
        (lambda: Tucker2Conv2d(4, 8, 3, ranks=(1, 2, 3)), r"ranks=\(1, 2, 3\) must be a pair"),
        (lambda: Tucker2Conv2d(4, 8, 3, ranks=(0, 2)), r"ranks=\(0, 2\) must be a pair \(r_in, r_out\) of ints >= 1"),
        (lambda: Tucker2Conv2d(4, 8, 3, ranks=2), r"ranks=2 must be a pair"),
        (lambda: Tucker2Conv2d(4, 8, 3, ranks=(1.0, 2)), r"ranks=\(1.0, 2\) must be a pair"),
        (lambda: Tucker2Conv2d(4, 8, 3, dilation=0), r"dilation=0 must be >= 1"),
    ],
)
def test_invalid_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "layer",
    [DepthwiseConv2d(4, 8, 3), PointwiseConv2d(4, 8), DepthwiseSeparableConv2d(4, 8, 3),
     Tucker2Conv2d(4, 8, 3, ranks=(2, 2))],
    ids=lambda m: type(m).__name__,
)
def test_wrong_input_rank_or_channels_raise(layer):
    check_rejects_bad_input(layer, 4)


# ----------------------------------------------------------------------------- tracing


@pytest.mark.parametrize(
    "layer",
    [
        DepthwiseConv2d(4, 8, 3, 2, "same"),
        DepthwiseConv2d(4, 4, (3, 4), 1, "same", (2, 1), padding_mode="reflect"),
        PointwiseConv2d(4, 6, 2, groups=2),
        DepthwiseSeparableConv2d(4, 6, 3, 2, "same", depth_multiplier=2,
                                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
        DepthwiseSeparableConv2d(4, 6, 3, 1, 1, 2, norm_layer=partial(nn.BatchNorm2d, affine=False)),
        Tucker2Conv2d(4, 6, 3, 2, "same", ranks=(2, 3)),
        Tucker2Conv2d(4, 6, (1, 3), 1, (0, 1), padding_mode="circular"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_traceable(layer):
    randomize_norms(layer)
    check_traceable(layer, torch.randn(2, 4, 11, 10))


def test_separable_compiles():
    layer = DepthwiseSeparableConv2d(4, 6, 3, 2, "same", norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    check_traceable(layer, torch.randn(2, 4, 11, 10), compile=True)
