"""Blocks: Bottleneck, InvertedResidual, SmallBasicBlock, ASPP (seed rows S3, S5, S6).

References are explicit torch.nn.functional compositions in float64 with the blocks' weights,
or the seed pages' own modules (LPRNet's small_basic_block, the page's ASPP) with the weights
copied over.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leanconv.layers.blocks import (
    ASPP,
    Bottleneck,
    InvertedResidual,
    KindConvNormAct,
    SmallBasicBlock,
)
from support import F64, bn_eval, check_traceable, randomize_norms


def _eval(module: nn.Module) -> nn.Module:
    return randomize_norms(module).eval()


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    """nn.Conv2d's output length."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------- Bottleneck


def _ref_bottleneck(b: Bottleneck, x: torch.Tensor, stride: int, dilation: int, groups: int,
                    projection: bool) -> torch.Tensor:
    y = F.relu(bn_eval(F.conv2d(x, b.reduce.conv.weight), b.reduce.norm))
    y = F.conv2d(y, b.conv.conv.weight, None, stride, dilation, dilation, groups)
    y = F.relu(bn_eval(y, b.conv.norm))
    y = bn_eval(F.conv2d(y, b.expand.conv.weight), b.expand.norm)
    if projection:
        s = bn_eval(F.conv2d(x, b.shortcut.conv.weight, None, stride), b.shortcut.norm)
    else:
        s = x
    return F.relu(y + s)


@settings(max_examples=25)
@given(
    in_c=st.sampled_from([8, 16]),
    out_c=st.sampled_from([8, 16]),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    h=st.integers(5, 12),
    w=st.integers(5, 12),
)
def test_bottleneck_matches_functional(in_c, out_c, stride, dilation, groups, h, w):
    b = _eval(Bottleneck(in_c, out_c, stride, groups=groups, dilation=dilation, dtype=F64))
    projection = not (stride == 1 and in_c == out_c)
    assert isinstance(b.shortcut, nn.Identity) != projection
    x = torch.randn(2, in_c, h, w, dtype=F64)
    with torch.no_grad():
        y = b(x)
        ref = _ref_bottleneck(b, x, stride, dilation, groups, projection)
    # v1.5: the 3x3 with padding=dilation carries the stride -> ceil(H/s), like the 1x1 shortcut.
    assert y.shape == (2, out_c, -(-h // stride), -(-w // stride))
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_bottleneck_param_counts_closed_form():
    b = Bottleneck(256, 256)
    assert b.mid_channels == 64 and isinstance(b.shortcut, nn.Identity)
    conv_weights = 256 * 64 + 64 * 64 * 9 + 64 * 256
    assert conv_weights == 69_632
    bn_affine = 2 * (64 + 64 + 256)
    assert _n_params(b) == conv_weights + bn_affine == 70_400

    p = Bottleneck(64, 256, stride=1)  # channel change -> projection shortcut
    assert isinstance(p.shortcut, nn.Module) and not isinstance(p.shortcut, nn.Identity)
    assert p.shortcut.conv.kernel_size == (1, 1) and p.shortcut.conv.bias is None
    assert isinstance(p.shortcut.act, nn.Identity)
    conv_weights = 64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256
    bn_affine = 2 * (64 + 64 + 256 + 256)
    assert _n_params(p) == conv_weights + bn_affine == 75_008

    g = Bottleneck(128, 256, stride=2, mid_channels=128, groups=32)  # ResNeXt-style 3x3
    assert _n_params(g) == 128 * 128 + 128 * (128 // 32) * 9 + 128 * 256 + 128 * 256 + 2 * (128 + 128 + 256 + 256)


def test_bottleneck_stride_on_3x3_and_names():
    b = Bottleneck(64, 256, stride=2)
    assert b.reduce.conv.stride == (1, 1)
    assert b.conv.conv.stride == (2, 2) and b.conv.conv.kernel_size == (3, 3)
    assert b.expand.conv.stride == (1, 1) and isinstance(b.expand.act, nn.Identity)
    assert b.shortcut.conv.stride == (2, 2)
    keys = set(b.state_dict())
    for key in ("reduce.conv.weight", "conv.conv.weight", "conv.norm.running_var",
                "expand.norm.weight", "shortcut.conv.weight", "shortcut.norm.bias"):
        assert key in keys
    assert b.conv.conv_norm_pairs == (("conv", "norm"),)


def test_bottleneck_without_norm_has_biases():
    b = Bottleneck(8, 8, norm_layer=None, dtype=F64).eval()
    assert b.reduce.conv.bias is not None and b.conv.conv.bias is not None
    x = torch.randn(1, 8, 7, 7, dtype=F64)
    y = F.relu(F.conv2d(x, b.reduce.conv.weight, b.reduce.conv.bias))
    y = F.relu(F.conv2d(y, b.conv.conv.weight, b.conv.conv.bias, 1, 1))
    y = F.conv2d(y, b.expand.conv.weight, b.expand.conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(b(x), F.relu(y + x), rtol=1e-10, atol=1e-10)


def test_bottleneck_grouped_kind_options():
    b = Bottleneck(16, 16, conv="grouped", conv_options={"groups": 4})
    assert b.conv.conv.groups == 4
    with pytest.raises(ValueError, match="groups=2 conflicts"):
        Bottleneck(16, 16, groups=2, conv="grouped", conv_options={"groups": 4})


def test_bottleneck_dsconv_3x3():
    """conv='dsconv' (needs leanconv.layers.DepthwiseSeparableConv2d)."""
    b = _eval(Bottleneck(16, 32, stride=2, conv="dsconv", dtype=F64))
    mid = 8
    dense = Bottleneck(16, 32, stride=2)
    assert _n_params(dense) - _n_params(b) == mid * mid * 9 - (mid * 9 + mid * mid)
    assert b.conv.conv_norm_pairs == (("conv.pointwise", "norm"),)
    x = torch.randn(2, 16, 9, 10, dtype=F64)
    with torch.no_grad():
        y = b(x)
        t = F.relu(bn_eval(F.conv2d(x, b.reduce.conv.weight), b.reduce.norm))
        t = F.conv2d(t, b.conv.conv.depthwise.weight, None, 2, 1, 1, mid)
        t = F.relu(bn_eval(F.conv2d(t, b.conv.conv.pointwise.weight), b.conv.norm))
        t = bn_eval(F.conv2d(t, b.expand.conv.weight), b.expand.norm)
        s = bn_eval(F.conv2d(x, b.shortcut.conv.weight, None, 2), b.shortcut.norm)
    torch.testing.assert_close(y, F.relu(t + s), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- InvertedResidual


def _ref_inverted_residual(m: InvertedResidual, x, stride, kernel, dilation, hidden, residual):
    y = x
    if not isinstance(m.expand, nn.Identity):
        y = F.relu6(bn_eval(F.conv2d(y, m.expand.conv.weight), m.expand.norm))
    pad = dilation * (kernel - 1) // 2
    y = F.relu6(bn_eval(F.conv2d(y, m.depthwise.conv.weight, None, stride, pad, dilation, hidden), m.depthwise.norm))
    y = bn_eval(F.conv2d(y, m.project.conv.weight), m.project.norm)
    return x + y if residual else y


@settings(max_examples=25)
@given(
    in_c=st.sampled_from([4, 8]),
    out_c=st.sampled_from([4, 8]),
    stride=st.sampled_from([1, 2]),
    expand_ratio=st.sampled_from([1, 2.5, 6]),
    kernel=st.sampled_from([1, 3, 5, 7]),
    dilation=st.integers(1, 3),
    h=st.integers(5, 12),
    w=st.integers(5, 12),
)
def test_inverted_residual_matches_functional(in_c, out_c, stride, expand_ratio, kernel, dilation, h, w):
    m = _eval(InvertedResidual(in_c, out_c, stride, expand_ratio, kernel, dilation, dtype=F64))
    hidden = int(round(in_c * expand_ratio))
    assert m.hidden_channels == hidden
    assert isinstance(m.expand, nn.Identity) == (expand_ratio == 1)
    residual = stride == 1 and in_c == out_c
    assert m.use_residual == residual
    x = torch.randn(2, in_c, h, w, dtype=F64)
    with torch.no_grad():
        y = m(x)
        ref = _ref_inverted_residual(m, x, stride, kernel, dilation, hidden, residual)
    pad = dilation * (kernel - 1) // 2
    assert y.shape == (2, out_c, _conv_out(h, kernel, stride, pad, dilation), _conv_out(w, kernel, stride, pad, dilation))
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_inverted_residual_mobilenet_v2_counts():
    # MobileNetV2's first two blocks (t=1, 32->16; t=6, 16->24, s=2), counted by hand.
    first = InvertedResidual(32, 16, 1, expand_ratio=1)
    assert _n_params(first) == 32 * 9 + 2 * 32 + 32 * 16 + 2 * 16 == 896
    second = InvertedResidual(16, 24, 2, expand_ratio=6)
    assert _n_params(second) == 16 * 96 + 2 * 96 + 96 * 9 + 2 * 96 + 96 * 24 + 2 * 24 == 5136
    # MACs on MobileNetV2's 112x112 stage input: convs only, counted from the weight shapes.
    macs = {}

    def hook(mod, inp, out):
        macs[mod] = out.shape[1] * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1] * out.shape[2] * out.shape[3]

    for c in second.modules():
        if isinstance(c, nn.Conv2d):
            c.register_forward_hook(hook)
    second.eval()(torch.zeros(1, 16, 112, 112))
    assert sum(macs.values()) == 16 * 96 * 112 * 112 + 96 * 9 * 56 * 56 + 96 * 24 * 56 * 56
    assert isinstance(second.project.act, nn.Identity) and isinstance(second.depthwise.act, nn.ReLU6)


# --------------------------------------------------------------------------- SmallBasicBlock


class small_basic_block(nn.Module):  # noqa: N801 - the seed page's LPRNet code, as written there
    def __init__(self, ch_in, ch_out):
        super(small_basic_block, self).__init__()
        self.block = nn.Sequential(
            nn.Conv2d(ch_in, ch_out // 4, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(ch_out // 4, ch_out // 4, kernel_size=(3, 1), padding=(1, 0)),
            nn.ReLU(),
            nn.Conv2d(ch_out // 4, ch_out // 4, kernel_size=(1, 3), padding=(0, 1)),
            nn.ReLU(),
            nn.Conv2d(ch_out // 4, ch_out, kernel_size=1),
        )

    def forward(self, x):
        return self.block(x)


SBB_NAMES = {"block.0": "reduce", "block.2": "conv_kx1", "block.4": "conv_1xk", "block.6": "expand"}


@settings(max_examples=25)
@given(
    in_c=st.integers(1, 12),
    out_c=st.sampled_from([4, 8, 16, 256]),
    h=st.integers(1, 12),
    w=st.integers(1, 24),
)
def test_small_basic_block_matches_seed(in_c, out_c, h, w):
    seed = small_basic_block(in_c, out_c).double().eval()
    block = SmallBasicBlock(in_c, out_c, dtype=F64).eval()
    mapped = {}
    for key, value in seed.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        mapped[f"{SBB_NAMES[prefix]}.{leaf}"] = value
    block.load_state_dict(mapped, strict=True)  # same parameter set, one to one
    x = torch.randn(2, in_c, h, w, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), seed(x), rtol=1e-12, atol=1e-12)
    assert _n_params(block) == _n_params(seed)


def test_small_basic_block_structure_and_norm():
    b = SmallBasicBlock(64, 128)
    assert b.conv_kx1.kernel_size == (3, 1) and b.conv_kx1.padding == (1, 0)
    assert b.conv_1xk.kernel_size == (1, 3) and b.conv_1xk.padding == (0, 1)
    assert b.reduce.out_channels == 32 and b.expand.out_channels == 128
    assert all(isinstance(getattr(b, f"norm{i}"), nn.Identity) for i in (1, 2, 3))
    q = 32
    assert _n_params(b) == 64 * q + q + 3 * q * q + q + 3 * q * q + q + q * 128 + 128

    n = _eval(SmallBasicBlock(6, 8, norm_layer=nn.BatchNorm2d, dtype=F64))
    assert n.reduce.bias is None and n.expand.bias is not None  # the norm's shift replaces the bias
    x = torch.randn(2, 6, 5, 7, dtype=F64)
    y = F.relu(bn_eval(F.conv2d(x, n.reduce.weight), n.norm1))
    y = F.relu(bn_eval(F.conv2d(y, n.conv_kx1.weight, None, 1, (1, 0)), n.norm2))
    y = F.relu(bn_eval(F.conv2d(y, n.conv_1xk.weight, None, 1, (0, 1)), n.norm3))
    y = F.conv2d(y, n.expand.weight, n.expand.bias)
    with torch.no_grad():
        torch.testing.assert_close(n(x), y, rtol=1e-10, atol=1e-10)
    for conv_path, norm_path in SmallBasicBlock.conv_norm_pairs:
        assert isinstance(n.get_submodule(conv_path), nn.Conv2d)
        assert isinstance(n.get_submodule(norm_path), nn.BatchNorm2d)


# --------------------------------------------------------------------------- ASPP


SEED_ATROUS = (4, 8, 12, 16, 20, 24)  # the seed ASPP's dilations, in units of ``rate``


def _seed_aspp_class():
    """The seed page's ASPP: its module names, layer settings and forward as the user wrote them.

    The page lost the '*' signs (``padding=4*rate``); restored here. The page spells out the
    six atrous branches (``branch2`` .. ``branch7``, dilation 4r .. 24r) one by one; here one
    loop builds the same ``nn.Sequential(conv, bn, relu)`` under the same names, in the same
    order, so the state_dict keys and the computation are the page's.

    Defined in a function so that its own ``super(ASPP, self)`` finds the seed class, not
    leanconv's ASPP imported at the top of this file.
    """

    class ASPP(nn.Module):
        def __init__(self, dim_in, dim_out, rate=1, bn_mom=0.1):
            super(ASPP, self).__init__()

            def branch(kernel_size, padding, dilation):
                return nn.Sequential(
                    nn.Conv2d(dim_in, dim_out, kernel_size, 1, padding=padding, dilation=dilation, bias=True),
                    nn.BatchNorm2d(dim_out, momentum=bn_mom),
                    nn.ReLU(inplace=True),
                )

            self.branch1 = branch(1, 0, rate)
            for i, k in enumerate(SEED_ATROUS):
                setattr(self, f"branch{i + 2}", branch(3, k * rate, k * rate))
            self.branch8_conv = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=True)
            self.branch8_bn = nn.BatchNorm2d(dim_out, momentum=bn_mom)
            self.branch8_relu = nn.ReLU(inplace=True)
            self.conv_cat = nn.Sequential(
                nn.Conv2d(dim_out * 8, dim_out, 1, 1, padding=0, bias=True),
                nn.BatchNorm2d(dim_out, momentum=bn_mom),
                nn.ReLU(inplace=True),
            )

        def forward(self, x):
            [b, c, row, col] = x.size()
            conv1x1 = self.branch1(x)
            conv3x3 = [getattr(self, f"branch{i + 2}")(x) for i in range(len(SEED_ATROUS))]
            global_feature = torch.mean(x, 2, True)
            global_feature = torch.mean(global_feature, 3, True)
            global_feature = self.branch8_conv(global_feature)
            global_feature = self.branch8_bn(global_feature)
            global_feature = self.branch8_relu(global_feature)
            global_feature = F.interpolate(global_feature, (row, col), None, 'bilinear', True)
            feature_cat = torch.cat([conv1x1, *conv3x3, global_feature], dim=1)
            result = self.conv_cat(feature_cat)
            return result

    return ASPP


SeedASPP = _seed_aspp_class()


def _seed_to_lean_names(rate: int) -> dict:
    """Module prefix in the seed's ASPP -> module prefix in ASPP.from_seed(...)."""
    names = {"branch1.0": "branches.conv1x1.conv", "branch1.1": "branches.conv1x1.norm"}
    for i, k in enumerate(SEED_ATROUS):
        names[f"branch{i + 2}.0"] = f"branches.atrous{k * rate}.conv"
        names[f"branch{i + 2}.1"] = f"branches.atrous{k * rate}.norm"
    names.update({
        "branch8_conv": "branches.pooling.conv", "branch8_bn": "branches.pooling.norm",
        "conv_cat.0": "project.conv", "conv_cat.1": "project.norm",
    })
    return names


def _load_seed_into_lean(seed: nn.Module, lean: ASPP, rate: int) -> None:
    names = _seed_to_lean_names(rate)
    mapped = {}
    for key, value in seed.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        mapped[f"{names[prefix]}.{leaf}"] = value
    lean.load_state_dict(mapped, strict=True)  # every key on both sides, shapes equal


@settings(max_examples=10)
@given(rate=st.sampled_from([1, 2]), h=st.integers(3, 13), w=st.integers(3, 13), dim_in=st.sampled_from([3, 8]))
def test_aspp_from_seed_matches_the_seed_module(rate, h, w, dim_in):
    dim_out = 4
    seed = randomize_norms(SeedASPP(dim_in, dim_out, rate=rate, bn_mom=0.1)).double().eval()
    lean = ASPP.from_seed(dim_in, dim_out, rate=rate, bn_mom=0.1).double().eval()
    assert lean.rates == tuple(k * rate for k in SEED_ATROUS)
    assert list(lean.branches) == ["conv1x1"] + [f"atrous{k * rate}" for k in SEED_ATROUS] + ["pooling"]
    _load_seed_into_lean(seed, lean, rate)
    x = torch.randn(2, dim_in, h, w, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(lean(x), seed(x), rtol=1e-10, atol=1e-10)
    assert _n_params(lean) == _n_params(seed)


def test_aspp_from_seed_training_step_matches_seed():
    """Train mode: batch statistics and the bn_mom running-stat update agree with the seed's."""
    seed = SeedASPP(4, 4, rate=1, bn_mom=0.3).double().train()
    lean = ASPP.from_seed(4, 4, rate=1, bn_mom=0.3).double().train()
    _load_seed_into_lean(seed, lean, 1)
    x = torch.randn(3, 4, 9, 11, dtype=F64)
    torch.testing.assert_close(lean(x), seed(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lean.branches["atrous24"].norm.running_var, seed.branch7[1].running_var)
    torch.testing.assert_close(lean.project.norm.running_mean, seed.conv_cat[1].running_mean)
    assert lean.project.norm.momentum == 0.3


def _ref_aspp(m: ASPP, x: torch.Tensor, rates, pooling: bool) -> torch.Tensor:
    outs = []
    b = m.branches["conv1x1"]
    outs.append(F.relu(bn_eval(F.conv2d(x, b.conv.weight, b.conv.bias), b.norm)))
    for r in rates:
        b = m.branches[f"atrous{r}"]
        outs.append(F.relu(bn_eval(F.conv2d(x, b.conv.weight, b.conv.bias, 1, r, r), b.norm)))
    if pooling:
        b = m.branches["pooling"]
        g = x.mean(dim=(2, 3), keepdim=True)
        g = F.relu(bn_eval(F.conv2d(g, b.conv.weight, b.conv.bias), b.norm))
        outs.append(g.expand(-1, -1, x.shape[2], x.shape[3]))
    y = torch.cat(outs, dim=1)
    return F.relu(bn_eval(F.conv2d(y, m.project.conv.weight, m.project.conv.bias), m.project.norm))


@settings(max_examples=20)
@given(
    rates=st.lists(st.integers(1, 5), min_size=1, max_size=3, unique=True),
    pooling=st.booleans(),
    bias=st.booleans(),
    h=st.integers(2, 11),
    w=st.integers(2, 11),
)
def test_aspp_matches_functional(rates, pooling, bias, h, w):
    m = _eval(ASPP(5, 6, rates=tuple(rates), image_pooling=pooling, bias=bias, dropout=0.5, dtype=F64))
    assert (m.project.conv.bias is not None) == bias
    assert m.project.conv.in_channels == 6 * (1 + len(rates) + pooling)
    x = torch.randn(2, 5, h, w, dtype=F64)
    with torch.no_grad():
        y = m(x)  # eval: dropout is off
        torch.testing.assert_close(y, _ref_aspp(m, x, rates, pooling), rtol=1e-10, atol=1e-10)
    assert y.shape == (2, 6, h, w)


def test_aspp_default_rates_and_dropout_module():
    m = ASPP(16, 8)
    assert list(m.branches) == ["conv1x1", "atrous6", "atrous12", "atrous18", "pooling"]
    assert isinstance(m.dropout, nn.Identity)
    assert isinstance(ASPP(16, 8, dropout=0.1).dropout, nn.Dropout)
    assert m.branches["atrous12"].conv.dilation == (12, 12) and m.branches["atrous12"].conv.padding == (12, 12)


def test_aspp_dsconv_atrous_separable_branches():
    """conv='dsconv' (DeepLabv3+): same output shape, fewer params, depthwise carries the rate.

    Needs leanconv.layers.DepthwiseSeparableConv2d (the 'dsconv' kind's layer).
    """
    dense = ASPP.from_seed(16, 8)
    sep = ASPP(16, 8, rates=dense.rates, conv="dsconv", bias=True,
               norm_layer=partial(nn.BatchNorm2d, momentum=0.1), dtype=F64)
    x = torch.randn(2, 16, 10, 12, dtype=F64)
    sep = _eval(sep)
    with torch.no_grad():
        assert sep(x).shape == dense.double().eval()(x).shape == (2, 8, 10, 12)
    # each atrous branch: 16*9 depthwise + 16*8 pointwise (+8 bias) instead of 16*8*9 (+8)
    assert _n_params(dense) - _n_params(sep) == 6 * (16 * 8 * 9 - (16 * 9 + 16 * 8))
    for r in dense.rates:
        unit = sep.branches[f"atrous{r}"]
        dw, pw = unit.conv.depthwise, unit.conv.pointwise
        assert dw.groups == 16 and dw.dilation == (r, r) and dw.padding == (r, r) and dw.bias is None
        assert pw.kernel_size == (1, 1) and pw.bias is not None
        assert unit.conv_norm_pairs == (("conv.pointwise", "norm"),)
        with torch.no_grad():
            ref = F.conv2d(F.conv2d(x, dw.weight, None, 1, r, r, 16), pw.weight, pw.bias)
            torch.testing.assert_close(unit(x), F.relu(bn_eval(ref, unit.norm)), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- shared behaviour


BLOCKS = {
    "bottleneck": (lambda: Bottleneck(8, 16, stride=2), (2, 8, 9, 10)),
    "bottleneck_identity": (lambda: Bottleneck(16, 16, dilation=2), (2, 16, 8, 8)),
    "inverted_residual": (lambda: InvertedResidual(8, 8, 1, expand_ratio=4, kernel_size=5), (2, 8, 9, 9)),
    "inverted_residual_s2": (lambda: InvertedResidual(8, 12, 2, expand_ratio=1), (2, 8, 9, 10)),
    "small_basic_block": (lambda: SmallBasicBlock(8, 16, norm_layer=nn.BatchNorm2d), (2, 8, 6, 11)),
    "aspp_pooling": (lambda: ASPP(8, 4, rates=(1, 2, 3), image_pooling=True, dropout=0.1), (2, 8, 7, 9)),
    "aspp_seed": (lambda: ASPP.from_seed(4, 4), (2, 4, 6, 6)),
    "unit_dense": (lambda: KindConvNormAct("dense", 4, 6, 3, 2, padding="same"), (2, 4, 7, 8)),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_traceable_and_channels_last(name):
    factory, shape = BLOCKS[name]
    module = _eval(factory())
    x = torch.randn(*shape)
    check_traceable(module, x, compile=(name == "bottleneck"))
    with torch.no_grad():
        expected = module(x)
        got = copy.deepcopy(module).to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_device_dtype_and_conv_norm_pairs(name):
    factory, shape = BLOCKS[name]
    module = factory().to(F64)
    assert all(p.dtype == F64 for p in module.parameters())
    # every declared (conv, norm) pair resolves to a conv and a norm (or Identity)
    for sub in module.modules():
        for conv_path, norm_path in getattr(sub, "conv_norm_pairs", ()):
            assert isinstance(sub.get_submodule(conv_path), nn.Conv2d)
            assert isinstance(sub.get_submodule(norm_path), (nn.BatchNorm2d, nn.Identity))


def test_factory_kwargs_reach_every_parameter():
    for module in (
        Bottleneck(8, 16, stride=2, dtype=F64),
        InvertedResidual(8, 8, dtype=F64),
        SmallBasicBlock(8, 16, norm_layer=nn.BatchNorm2d, dtype=F64),
        ASPP(8, 4, rates=(1, 2), dtype=F64),
    ):
        assert all(t.dtype == F64 for t in module.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_wrong_input_shape_raises_before_compute(name):
    factory, shape = BLOCKS[name]
    module = factory().eval()
    with pytest.raises(ValueError, match=f"input has {shape[1] + 1} channels, expected {shape[1]}"):
        module(torch.randn(shape[0], shape[1] + 1, *shape[2:]))
    with pytest.raises(ValueError, match="must be 4-D"):
        module(torch.randn(*shape[1:]))


INVALID = [
    (lambda: Bottleneck(8, 2), r"out_channels=2 must be >= 4 when mid_channels is None"),
    (lambda: Bottleneck(8, 16, mid_channels=0), r"mid_channels=0 must be >= 1"),
    (lambda: Bottleneck(8, 16, mid_channels=6, groups=4), r"mid_channels=6 must be divisible by groups=4"),
    (lambda: Bottleneck(8, 16, groups=2, conv="dsconv"), r"groups=2 applies only to conv='dense' or 'grouped'"),
    (lambda: Bottleneck(8, 16, conv="nope"), r"kind='nope' is not a conv kind"),
    (lambda: Bottleneck(8, 16, conv="resize_conv"), r"conv='resize_conv' must be a kind that keeps"),
    (lambda: Bottleneck(8, 16, stride=0), r"stride=0 must be >= 1"),
    (lambda: Bottleneck(8, 16, dilation=0), r"dilation=0 must be >= 1"),
    (lambda: Bottleneck(0, 16), r"in_channels=0 must be >= 1"),
    (lambda: Bottleneck(8, 16, conv_options=[("groups", 2)]), r"conv_options=.* must be a mapping"),
    (lambda: Bottleneck(8, 16, conv_options={"rank": 2}), r"kind='dense' has no option 'rank'"),
    (lambda: Bottleneck(8, 16, act_layer="relu"), r"act_layer='relu' must be a callable"),
    (lambda: InvertedResidual(8, 8, stride=3), r"stride=3 must be 1 or 2"),
    (lambda: InvertedResidual(8, 8, expand_ratio=0), r"expand_ratio=0 must be a number > 0"),
    (lambda: InvertedResidual(8, 8, expand_ratio=0.01), r"hidden channels; it must be >= 1"),
    (lambda: InvertedResidual(8, 8, kernel_size=4), r"kernel_size=4 must be odd"),
    (lambda: InvertedResidual(8, 8, dilation=0), r"dilation=0 must be >= 1"),
    (lambda: InvertedResidual(8, 0), r"out_channels=0 must be >= 1"),
    (lambda: SmallBasicBlock(8, 10), r"out_channels=10 must be divisible by 4"),
    (lambda: SmallBasicBlock(8, 16, norm_layer=3), r"norm_layer=3 must be a callable"),
    (lambda: SmallBasicBlock(-1, 16), r"in_channels=-1 must be >= 1"),
    (lambda: ASPP(8, 4, rates=()), r"rates=\(\) must be a non-empty sequence of ints >= 1"),
    (lambda: ASPP(8, 4, rates=(0, 2)), r"rates=\(0, 2\) must be a non-empty sequence of ints >= 1"),
    (lambda: ASPP(8, 4, rates=(1.5,)), r"rates=\(1.5,\) must be a non-empty sequence"),
    (lambda: ASPP(8, 4, rates="6"), r"rates='6' must be a non-empty sequence"),
    (lambda: ASPP(8, 4, rates=(6, 6)), r"rates=\(6, 6\) must be distinct"),
    (lambda: ASPP(8, 4, dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (lambda: ASPP(8, 4, conv="pointwise"), r"conv='pointwise' must be a kind that keeps"),
    (lambda: ASPP(8, 4, image_pooling="yes"), r"image_pooling='yes' must be a bool"),
    (lambda: ASPP(8, 0), r"out_channels=0 must be >= 1"),
    (lambda: ASPP.from_seed(8, 4, rate=0), r"rate=0 must be >= 1"),
    (lambda: KindConvNormAct(3, 4, 4, 3), r"kind=3 must be the name of a conv kind"),
]


@pytest.mark.parametrize("build,message", INVALID)
def test_invalid_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("kind,pairs", [
    ("dense", (("conv", "norm"),)),
    ("grouped", (("conv", "norm"),)),
    ("dsconv", (("conv.pointwise", "norm"),)),
    ("asymmetric", (("conv.conv_1xk", "norm"),)),
    ("tucker2", (("conv.expand", "norm"),)),
    ("acblock", ()),  # summed parallel branches: no single conv to fold the norm into
])
def test_bottleneck_any_kind_keeps_shape(kind, pairs):
    b = Bottleneck(16, 32, stride=2, conv=kind).eval()
    assert b.conv.kind in (kind, "grouped")
    assert b.conv.conv_norm_pairs == pairs
    with torch.no_grad():
        assert b(torch.randn(1, 16, 9, 8)).shape == (1, 32, 5, 4)
