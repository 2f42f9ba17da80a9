"""Spatially separable layers: serial kx1/1xk, Inception-style parallel, ACNet block and its fuse.

References: nn.Conv2d output shapes; float64 F.conv2d with kernels built here from the layers'
own weights (the rank-factored kxk kernel, centre-row/column kernels embedded in kxk), padding
written out here (TF rule for 'same'); BatchNorm as F.batch_norm in eval mode.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leanconv.layers.asymmetric import (
    ACBlock,
    AsymmetricConv2d,
    ParallelAsymmetricConv2d,
    fold_bn,
    pad_kernel,
)
from leanconv.layers.conv import Conv2d
from support import F64, bn_eval, config_args, config_out_hw, conv_config, expected_hw, ref_pad
from support import check_device_and_dtype, check_rejects_bad_input, check_traceable, randomize_norms


# ----------------------------------------------------------------------------- references


def embed(weight, kernel, branch):
    """Place a 1xk (O, C, 1, kw) or kx1 (O, C, kh, 1) kernel on the centre row/column of kh x kw."""
    kh, kw = kernel
    out = weight.new_zeros(*weight.shape[:2], kh, kw)
    if branch == "1xk":
        out[:, :, kh // 2, :] = weight[:, :, 0, :]
    else:
        out[:, :, :, kw // 2] = weight[:, :, :, 0]
    return out


# ----------------------------------------------------------------------------- AsymmetricConv2d


@given(cfg=conv_config(), c=st.integers(1, 4), o=st.integers(1, 5),
       mid=st.one_of(st.none(), st.integers(1, 4)), order=st.sampled_from(["kx1_first", "1xk_first"]))
@settings(max_examples=40)
def test_asymmetric_shape_matches_conv2d(cfg, c, o, mid, order):
    layer = AsymmetricConv2d(c, o, *config_args(cfg), padding_mode=cfg["mode"], mid_channels=mid, order=order)
    y = layer(torch.randn(1, c, *cfg["hw"]))
    assert tuple(y.shape) == (1, o, *config_out_hw(cfg))


@given(cfg=conv_config(), order=st.sampled_from(["kx1_first", "1xk_first"]), bias=st.booleans())
@settings(max_examples=30)
def test_asymmetric_is_a_rank_factored_kxk_conv(cfg, order, bias):
    """Zeros padding: the two stages equal one kh x kw conv with W = sum_m B[o,m] A[m,c]."""
    layer = AsymmetricConv2d(3, 4, *config_args(cfg), bias, mid_channels=5, order=order, dtype=F64)
    kx1, row = layer.conv_kx1.weight, layer.conv_1xk.weight
    if order == "kx1_first":  # A = kx1 (mid, C, kh, 1), B = 1xk (O, mid, 1, kw)
        kernel = torch.einsum("omw,mch->ochw", row[:, :, 0, :], kx1[:, :, :, 0])
        second = layer.conv_1xk
    else:  # A = 1xk (mid, C, 1, kw), B = kx1 (O, mid, kh, 1)
        kernel = torch.einsum("omh,mcw->ochw", kx1[:, :, :, 0], row[:, :, 0, :])
        second = layer.conv_kx1
    x = torch.randn(2, 3, *cfg["hw"], dtype=F64)
    k, s, p, d = config_args(cfg)
    ref = F.conv2d(ref_pad(x, p, k, s, d), kernel, second.bias, s, 0, d)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", ["kx1_first", "1xk_first"])
@pytest.mark.parametrize("padding, stride, mode", [(1, 1, "zeros"), ("same", 2, "reflect"), ((2, 0), (2, 1), "replicate")])
def test_asymmetric_with_inner_norm_act_matches_functional(order, padding, stride, mode):
    layer = AsymmetricConv2d(3, 4, (3, 5), stride, padding, (1, 2), True, mode, mid_channels=6,
                             order=order, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU, dtype=F64)
    randomize_norms(layer).eval()
    s = layer.stride
    x = torch.randn(2, 3, 11, 14, dtype=F64)
    first, second = ((layer.conv_kx1, layer.conv_1xk) if order == "kx1_first"
                     else (layer.conv_1xk, layer.conv_kx1))
    assert first.bias is None and second.bias is not None
    assert first.out_channels == 6 and second.in_channels == 6
    assert layer.conv_kx1.stride == (s[0], 1) and layer.conv_1xk.stride == (1, s[1])
    assert layer.conv_kx1.dilation == (1, 1) and layer.conv_1xk.dilation == (1, 2)

    def stage(z, conv):
        pads = padding if isinstance(padding, str) else (
            (conv.padding[0], 0) if conv is layer.conv_kx1 else (0, conv.padding[1]))
        return F.conv2d(ref_pad(z, pads, conv.kernel_size, conv.stride, conv.dilation, mode),
                        conv.weight, conv.bias, conv.stride, 0, conv.dilation)

    ref = stage(F.relu(bn_eval(stage(x, first), layer.norm)), second)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)
    assert layer(x).shape[-2:] == expected_hw(11, 14, (3, 5), s, padding, (1, 2))


def test_asymmetric_padding_is_split_per_dimension():
    layer = AsymmetricConv2d(2, 3, (5, 3), (2, 3), (2, 1), (3, 1))
    assert layer.conv_kx1.kernel_size == (5, 1) and layer.conv_kx1.padding == (2, 0)
    assert layer.conv_kx1.stride == (2, 1) and layer.conv_kx1.dilation == (3, 1)
    assert layer.conv_1xk.kernel_size == (1, 3) and layer.conv_1xk.padding == (0, 1)
    assert layer.conv_1xk.stride == (1, 3) and layer.conv_1xk.dilation == (1, 1)
    same = AsymmetricConv2d(2, 3, 3, 2, "same")
    assert same.conv_kx1.padding_arg == "same" and same.conv_1xk.padding_arg == "same"
    assert layer.mid_channels == 3  # default mid = out_channels, like the seed's ConvBlock
    assert AsymmetricConv2d.conv_norm_pairs == (("conv_kx1", "norm"),)
    assert AsymmetricConv2d(2, 3, 3, order="1xk_first").conv_norm_pairs == (("conv_1xk", "norm"),)
    assert layer.conv_kx1.bias is None and layer.conv_1xk.bias is not None


def test_seed_convblock_is_asymmetric_1xk_first():
    """Seed 000's ConvBlock (1x3 then 3x1, padding (0,1) then (1,0)) in leanconv terms.

    The seed gives the first conv a bias too; with zero padding that bias is missing at the
    border rows of the second conv, so the block is not a 3x3 conv there. Without it, the
    leanconv layer reproduces the seed block exactly.
    """
    conv1 = nn.Conv2d(3, 4, kernel_size=(1, 3), stride=1, padding=(0, 1), bias=False).double()
    conv2 = nn.Conv2d(4, 4, kernel_size=(3, 1), stride=1, padding=(1, 0)).double()
    layer = AsymmetricConv2d(3, 4, 3, padding=1, order="1xk_first", dtype=F64)
    with torch.no_grad():
        layer.conv_1xk.weight.copy_(conv1.weight)
        layer.conv_kx1.weight.copy_(conv2.weight)
        layer.conv_kx1.bias.copy_(conv2.bias)
    x = torch.randn(2, 3, 8, 13, dtype=F64)
    torch.testing.assert_close(layer(x), conv2(conv1(x)))


# ----------------------------------------------------------------------------- parallel


@given(cfg=conv_config(odd=True), c=st.integers(1, 4), o=st.integers(2, 7))
@settings(max_examples=40)
def test_parallel_shape_matches_conv2d(cfg, c, o):
    layer = ParallelAsymmetricConv2d(c, o, *config_args(cfg), padding_mode=cfg["mode"])
    assert layer.branches["1xk"].out_channels == (o + 1) // 2
    assert layer.branches["kx1"].out_channels == o // 2
    y = layer(torch.randn(1, c, *cfg["hw"]))
    assert tuple(y.shape) == (1, o, *config_out_hw(cfg))


@given(cfg=conv_config(odd=True), o=st.integers(2, 5), bias=st.booleans())
@settings(max_examples=30)
def test_parallel_equals_kxk_conv_with_centre_cross_kernel(cfg, o, bias):
    """concat[1xk, kx1] == one kxk conv whose kernel is zero off the centre row / column."""
    layer = ParallelAsymmetricConv2d(3, o, *config_args(cfg), bias, cfg["mode"], dtype=F64)
    k, s, p, d = config_args(cfg)
    wide, tall = layer.branches["1xk"], layer.branches["kx1"]
    kernel = torch.cat([embed(wide.weight, k, "1xk"), embed(tall.weight, k, "kx1")])
    b = torch.cat([wide.bias, tall.bias]) if bias else None
    x = torch.randn(2, 3, *cfg["hw"], dtype=F64)
    ref = F.conv2d(ref_pad(x, p, k, s, d, cfg["mode"]), kernel, b, s, 0, d)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- ACBlock


@given(cfg=conv_config(odd=True), c=st.integers(1, 3), o=st.integers(1, 3), g=st.sampled_from([1, 2]))
@settings(max_examples=30)
def test_acblock_shape_matches_conv2d(cfg, c, o, g):
    layer = ACBlock(c * g, o * g, *config_args(cfg), groups=g, padding_mode=cfg["mode"])
    y = layer(torch.randn(2, c * g, *cfg["hw"]))
    assert tuple(y.shape) == (2, o * g, *config_out_hw(cfg))


@given(cfg=conv_config(odd=True), g=st.sampled_from([1, 2]))
@settings(max_examples=25)
def test_acblock_matches_functional_branches(cfg, g):
    """Eval output == sum over branches of BN(conv(padded x, branch kernel embedded in kxk))."""
    layer = randomize_norms(ACBlock(4, 6, *config_args(cfg), groups=g, padding_mode=cfg["mode"], dtype=F64)).eval()
    k, s, p, d = config_args(cfg)
    x = torch.randn(2, 4, *cfg["hw"], dtype=F64)
    xp = ref_pad(x, p, k, s, d, cfg["mode"])
    ref = 0
    for name in ("kxk", "1xk", "kx1"):
        branch = layer.branches[name]
        w = branch.conv.weight if name == "kxk" else embed(branch.conv.weight, k, name)
        ref = ref + bn_eval(F.conv2d(xp, w, None, s, 0, d, g), branch.norm)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


FUSE_CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=(3, 5), stride=2, padding=(1, 2)),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=(5, 3), stride=2, padding="same", dilation=(1, 2)),
    dict(kernel_size=3, stride=2, padding="same", groups=2),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=5, stride=2, padding="same", padding_mode="reflect"),
    dict(kernel_size=3, padding=(0, 1), padding_mode="circular"),
    dict(kernel_size=3, padding=1, norm_layer=partial(nn.BatchNorm2d, affine=False)),
    dict(kernel_size=3, padding=1, norm_layer=None, bias=True),
    dict(kernel_size=3, stride=2, padding="same", norm_layer=None, bias=False),
]


@pytest.mark.parametrize("kwargs", FUSE_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()
                                                                        if k != "norm_layer") or "plain")
def test_acblock_fuse_matches_block_in_eval(kwargs):
    block = randomize_norms(ACBlock(4, 6, **kwargs, dtype=F64))
    if block.branches["kxk"].conv.bias is not None:
        with torch.no_grad():
            block.branches["kxk"].conv.bias.normal_()
    block.eval()
    fused = block.fuse()
    assert type(fused) is Conv2d
    assert fused.kernel_size == block.kernel_size and fused.groups == block.groups
    assert fused.stride == block.stride and fused.dilation == block.dilation
    assert fused.padding_arg == kwargs["padding"] and fused.padding_mode == block.padding_mode
    assert fused.bias is not None and fused.weight.dtype == F64
    x = torch.randn(2, 4, 13, 10, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), rtol=1e-10, atol=1e-10)


def test_acblock_structure():
    block = ACBlock(4, 6)
    assert set(block.branches) == {"kxk", "1xk", "kx1"}
    assert block.branches["kxk"].conv.kernel_size == (3, 3)
    assert block.branches["1xk"].conv.kernel_size == (1, 3)
    assert block.branches["kx1"].conv.kernel_size == (3, 1)
    assert all(b.conv.bias is None for b in block.branches.values())
    for conv_path, norm_path in ACBlock.conv_norm_pairs:
        assert isinstance(block.get_submodule(conv_path), nn.Conv2d)
        assert isinstance(block.get_submodule(norm_path), nn.BatchNorm2d)
    plain = ACBlock(4, 6, norm_layer=None, bias=True)
    assert plain.branches["kxk"].conv.bias is not None
    assert plain.branches["1xk"].conv.bias is None and plain.branches["kx1"].conv.bias is None
    assert all(isinstance(b.norm, nn.Identity) for b in plain.branches.values())
    keys = set(block.state_dict())
    assert "branches.1xk.conv.weight" in keys and "branches.kx1.norm.running_var" in keys


def test_acblock_fuse_rejects_unfoldable_norm():
    block = ACBlock(4, 6, norm_layer=partial(nn.GroupNorm, 2))
    with pytest.raises(ValueError, match=r"branches.kxk.norm=GroupNorm cannot be folded"):
        block.fuse()


# ----------------------------------------------------------------------------- fusion algebra


@pytest.mark.parametrize("affine, with_bias", [(True, True), (True, False), (False, True), (False, False)])
def test_fold_bn_matches_batchnorm_after_conv(affine, with_bias):
    conv = nn.Conv2d(3, 5, 3, bias=with_bias).double()
    norm = randomize_norms(nn.BatchNorm2d(5, affine=affine).double()).eval()
    w, b = fold_bn(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                   norm.weight, norm.bias)
    x = torch.randn(2, 3, 7, 6, dtype=F64)
    torch.testing.assert_close(F.conv2d(x, w, b), norm(conv(x)))


def test_pad_kernel_centres_and_rejects_uneven():
    w = torch.arange(6.0).view(1, 2, 1, 3)
    padded = pad_kernel(w, (5, 3))
    assert padded.shape == (1, 2, 5, 3)
    torch.testing.assert_close(padded[:, :, 2:3, :], w)
    assert padded.abs().sum() == w.abs().sum()
    with pytest.raises(ValueError, match=r"cannot be centred in kernel_size=\(4, 3\)"):
        pad_kernel(w, (4, 3))
    with pytest.raises(ValueError, match=r"cannot be centred"):
        pad_kernel(torch.zeros(1, 1, 3, 3), (1, 3))


# ----------------------------------------------------------------------------- device / dtype


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: AsymmetricConv2d(2, 4, 3, norm_layer=nn.BatchNorm2d, **kw),
        lambda **kw: ParallelAsymmetricConv2d(2, 4, 3, **kw),
        lambda **kw: ACBlock(2, 4, 3, **kw),
    ],
)
def test_device_and_dtype_reach_every_parameter(make):
    check_device_and_dtype(make)


# ----------------------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: AsymmetricConv2d(4, 8, 3, order="3x1_first"), r"order='3x1_first' must be one of"),
        (lambda: AsymmetricConv2d(4, 8, 3, mid_channels=0), r"mid_channels=0 must be >= 1"),
        (lambda: AsymmetricConv2d(4, 8, 3, mid_channels=2.0), r"mid_channels=2.0 must be an int"),
        (lambda: AsymmetricConv2d(4, 8, 3, stride=-1), r"stride=-1 must be >= 1"),
        (lambda: AsymmetricConv2d(4, 8, 3, padding="full"), r"padding='full' must be"),
        (lambda: AsymmetricConv2d(4, 8, (3, 3, 3)), r"kernel_size=\(3, 3, 3\) must be an int or a pair"),
        (lambda: AsymmetricConv2d(4, 8, 3, padding_mode="mirror"), r"padding_mode='mirror'"),
        (lambda: AsymmetricConv2d(4, 8, 3, norm_layer=1), r"norm_layer=1 must be a callable"),
        (lambda: ParallelAsymmetricConv2d(4, 8, (3, 4)), r"kernel_size=\(3, 4\) must be odd"),
        (lambda: ParallelAsymmetricConv2d(4, 1, 3), r"out_channels=1 must be >= 2"),
        (lambda: ParallelAsymmetricConv2d(4, 8, 3, dilation=0), r"dilation=0 must be >= 1"),
        (lambda: ParallelAsymmetricConv2d(4, 8, 3, padding=(1, -1)), r"padding=\(1, -1\) must be non-negative"),
        (lambda: ACBlock(4, 8, 2), r"kernel_size=2 must be odd"),
        (lambda: ACBlock(4, 6, 3, groups=4), r"out_channels=6 must be divisible by groups=4"),
        (lambda: ACBlock(4, 6, 3, stride=(1, 0)), r"stride=\(1, 0\) must be >= 1"),
        (lambda: ACBlock(4, 6, 3, padding="full"), r"padding='full' must be"),
        (lambda: ACBlock(0, 6, 3), r"in_channels=0 must be >= 1"),
    ],
)
def test_invalid_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "layer",
    [AsymmetricConv2d(4, 8, 3), ParallelAsymmetricConv2d(4, 8, 3), ACBlock(4, 8)],
    ids=lambda m: type(m).__name__,
)
def test_wrong_input_rank_or_channels_raise(layer):
    check_rejects_bad_input(layer, 4)


# ----------------------------------------------------------------------------- tracing


@pytest.mark.parametrize(
    "layer",
    [
        AsymmetricConv2d(4, 6, (3, 5), 2, "same", (2, 1)),
        AsymmetricConv2d(4, 6, 3, 1, 1, order="1xk_first", padding_mode="reflect",
                         norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
        ParallelAsymmetricConv2d(4, 5, (3, 5), 2, "same", (1, 2), padding_mode="reflect"),
        ParallelAsymmetricConv2d(4, 6, 3, 1, 1),
        ParallelAsymmetricConv2d(4, 6, 3, 1, "same"),
        ACBlock(4, 6, 3, 2, "same", groups=2),
        ACBlock(4, 6, 3, 1, 1, padding_mode="circular"),
        ACBlock(4, 6, 3, 1, "valid", norm_layer=None, bias=True),
    ],
    ids=lambda m: type(m).__name__,
)
def test_traceable(layer):
    randomize_norms(layer)
    check_traceable(layer, torch.randn(2, 4, 11, 10))


@pytest.mark.parametrize(
    "layer",
    [AsymmetricConv2d(4, 6, 3, 2, "same", norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
     ACBlock(4, 6, 3, 2, "same")],
    ids=lambda m: type(m).__name__,
)
def test_compiles(layer):
    check_traceable(randomize_norms(layer), torch.randn(2, 4, 11, 10), compile=True)


def test_fused_acblock_traceable():
    block = randomize_norms(ACBlock(4, 6, 3, 2, "same")).eval()
    check_traceable(block.fuse(), torch.randn(2, 4, 11, 10))
