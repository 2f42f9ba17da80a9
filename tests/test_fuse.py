"""Fusion identities against explicit torch.nn.functional compositions (float64, eval mode)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import leanconv
from leanconv.fusion import add_branches, fold_bn, fuse_conv_bn, merge_1x1_kxk, pad_kernel
from support import check_traceable, randomize_norms

F64 = torch.float64


def bn_eval(y, mean, var, eps, gamma, beta):
    return F.batch_norm(y, mean, var, gamma, beta, training=False, eps=eps)


def random_bn(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    return randomize_norms(nn.BatchNorm2d(channels, affine=affine, dtype=F64)).eval()


@settings(max_examples=25)
@given(
    groups=st.sampled_from([1, 2, "depthwise"]),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    padding=st.integers(0, 2),
    size=st.tuples(st.integers(13, 16), st.integers(13, 16)),  # >= largest dilated extent
    affine=st.booleans(),
    with_bias=st.booleans(),
)
def test_fold_bn_conv(groups, kernel, stride, dilation, padding, size, affine, with_bias):
    c, o = 4, 8
    g = c if groups == "depthwise" else groups
    w = torch.randn(o, c // g, *kernel, dtype=F64)
    b = torch.randn(o, dtype=F64) if with_bias else None
    bn = random_bn(o, affine)
    x = torch.randn(2, c, *size, dtype=F64)
    expected = bn_eval(F.conv2d(x, w, b, stride, padding, dilation, g), bn.running_mean, bn.running_var,
                       bn.eps, bn.weight, bn.bias)
    fw, fb = fold_bn(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias, groups=g)
    torch.testing.assert_close(F.conv2d(x, fw, fb, stride, padding, dilation, g), expected)


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_bn_conv_stride2_dilation2(groups, affine, with_bias):
    c, o = 6, 12  # groups=6 is depthwise (depth multiplier 2)
    w = torch.randn(o, c // groups, 3, 5, dtype=F64)
    b = torch.randn(o, dtype=F64) if with_bias else None
    bn = random_bn(o, affine)
    x = torch.randn(2, c, 13, 14, dtype=F64)
    expected = bn_eval(F.conv2d(x, w, b, 2, (2, 3), 2, groups), bn.running_mean, bn.running_var,
                       bn.eps, bn.weight, bn.bias)
    fw, fb = fold_bn(w, b, bn.running_mean, bn.running_var, bn.eps,
                     bn.weight if affine else None, bn.bias if affine else None, groups=groups)
    torch.testing.assert_close(F.conv2d(x, fw, fb, 2, (2, 3), 2, groups), expected)


@pytest.mark.parametrize("c, o, groups", [(4, 8, 1), (4, 8, 2), (6, 4, 2), (4, 8, 4), (6, 9, 3)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_bn_transposed(c, o, groups, affine, with_bias):
    w = torch.randn(c, o // groups, 3, 3, dtype=F64)  # transposed layout (C_in, O/g, kh, kw)
    b = torch.randn(o, dtype=F64) if with_bias else None
    bn = random_bn(o, affine)
    x = torch.randn(2, c, 5, 6, dtype=F64)
    args = (2, 1, 1, groups, 2)  # stride, padding, output_padding, groups, dilation
    expected = bn_eval(F.conv_transpose2d(x, w, b, *args), bn.running_mean, bn.running_var,
                       bn.eps, bn.weight, bn.bias)
    fw, fb = fold_bn(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
                     transposed=True, groups=groups)
    assert fw.shape == w.shape
    torch.testing.assert_close(F.conv_transpose2d(x, fw, fb, *args), expected)


def test_fold_bn_rejects_mismatched_shapes():
    mean, var = torch.zeros(8), torch.ones(8)
    with pytest.raises(ValueError, match=r"running_mean has shape \(8,\), must be \(6,\)"):
        fold_bn(torch.randn(6, 4, 3, 3), None, mean, var, 1e-5)
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), must be \(8,\)"):
        fold_bn(torch.randn(8, 4, 3, 3), torch.zeros(5), mean, var, 1e-5)
    # transposed (C_in=4, O/g=4) with groups=2 has 8 outputs; with groups=1 only 4
    fold_bn(torch.randn(4, 4, 3, 3), None, mean, var, 1e-5, transposed=True, groups=2)
    with pytest.raises(ValueError, match=r"must be \(4,\).*transposed=True, groups=1"):
        fold_bn(torch.randn(4, 4, 3, 3), None, mean, var, 1e-5, transposed=True)
    with pytest.raises(ValueError, match="groups=3 must divide the transposed weight's C_in=4"):
        fold_bn(torch.randn(4, 4, 3, 3), None, torch.zeros(12), torch.ones(12), 1e-5, transposed=True, groups=3)
    with pytest.raises(ValueError, match="groups=0 must be an int >= 1"):
        fold_bn(torch.randn(8, 4, 3, 3), None, mean, var, 1e-5, groups=0)
    with pytest.raises(ValueError, match="weight must be 4-D"):
        fold_bn(torch.randn(8, 4, 3), None, mean, var, 1e-5)


def test_branches_padded_and_added_equal_one_3x3():
    c, o = 3, 5
    x = torch.randn(2, c, 8, 7, dtype=F64)
    kernels = {(3, 3): (1, 1), (1, 3): (0, 1), (3, 1): (1, 0), (1, 1): (0, 0)}
    branches = [(torch.randn(o, c, *k, dtype=F64), torch.randn(o, dtype=F64)) for k in kernels]
    expected = sum(F.conv2d(x, w, b, 1, p) for (w, b), p in zip(branches, kernels.values()))
    weight, bias = add_branches((pad_kernel(w, (3, 3)), b) for w, b in branches)
    torch.testing.assert_close(F.conv2d(x, weight, bias, 1, 1), expected)


def test_add_branches_without_bias_and_mismatch():
    w = torch.randn(2, 2, 3, 3)
    weight, bias = add_branches([(w, None), (w, None)])
    assert bias is None and torch.equal(weight, 2 * w)
    with pytest.raises(ValueError, match=r"branch weight shape \(2, 2, 1, 3\) must equal"):
        add_branches([(w, None), (torch.randn(2, 2, 1, 3), None)])
    with pytest.raises(ValueError, match="at least one"):
        add_branches([])


def test_pad_kernel_rejects_impossible_targets():
    with pytest.raises(ValueError, match=r"cannot be centred in kernel_size=\(1, 3\)"):
        pad_kernel(torch.zeros(1, 1, 3, 3), (1, 3))
    with pytest.raises(ValueError, match="differ by an even amount"):
        pad_kernel(torch.zeros(1, 1, 1, 3), (4, 3))


@pytest.mark.parametrize("with_b1", [True, False])
@pytest.mark.parametrize("with_b2", [True, False])
@pytest.mark.parametrize("kernel, stride", [((3, 3), 1), ((3, 5), 2), ((1, 1), 1)])
def test_merge_1x1_kxk(with_b1, with_b2, kernel, stride):
    c, m, o = 3, 4, 5
    w1, w2 = torch.randn(m, c, 1, 1, dtype=F64), torch.randn(o, m, *kernel, dtype=F64)
    b1 = torch.randn(m, dtype=F64) if with_b1 else None
    b2 = torch.randn(o, dtype=F64) if with_b2 else None
    x = torch.randn(2, c, 7, 9, dtype=F64)
    expected = F.conv2d(F.conv2d(x, w1, b1, 1, 0), w2, b2, stride, 0)
    w, b = merge_1x1_kxk(w1, b1, w2, b2)
    assert w.shape == (o, c, *kernel)
    assert (b is None) == (not with_b1 and not with_b2)
    torch.testing.assert_close(F.conv2d(x, w, b, stride, 0), expected)


def test_merge_1x1_kxk_padded_exact_only_without_b1():
    c, m, o = 3, 4, 5
    w1, w2, b2 = torch.randn(m, c, 1, 1, dtype=F64), torch.randn(o, m, 3, 3, dtype=F64), torch.randn(o, dtype=F64)
    x = torch.randn(1, c, 6, 6, dtype=F64)
    w, b = merge_1x1_kxk(w1, None, w2, b2)
    torch.testing.assert_close(F.conv2d(x, w, b, 1, 1), F.conv2d(F.conv2d(x, w1), w2, b2, 1, 1))
    # with a 1x1 bias the padded border differs (the docstring's stated limit)
    b1 = torch.randn(m, dtype=F64)
    w, b = merge_1x1_kxk(w1, b1, w2, b2)
    diff = F.conv2d(x, w, b, 1, 1) - F.conv2d(F.conv2d(x, w1, b1), w2, b2, 1, 1)
    torch.testing.assert_close(diff[..., 1:-1, 1:-1], torch.zeros_like(diff[..., 1:-1, 1:-1]))
    assert diff[..., 0, :].abs().max() > 1e-6


def test_merge_1x1_kxk_invalid():
    w2 = torch.randn(5, 4, 3, 3)
    with pytest.raises(ValueError, match="w1 must be a 1x1 kernel"):
        merge_1x1_kxk(w2, None, w2, None)
    with pytest.raises(ValueError, match="w2 has 4 input channels, w1 gives 3"):
        merge_1x1_kxk(torch.randn(3, 2, 1, 1), None, w2, None)


@pytest.mark.parametrize(
    "make_conv, size",
    [
        (lambda: leanconv.Conv2d(4, 6, 3, stride=2, padding="same", dtype=F64), (9, 10)),
        (lambda: leanconv.Conv2d(4, 6, 3, stride=2, padding="same", padding_mode="reflect", bias=False, dtype=F64), (10, 9)),
        (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False, dtype=F64), (7, 8)),
        (lambda: leanconv.Conv2d(4, 6, (3, 5), padding="same", dilation=2, padding_mode="reflect", dtype=F64), (11, 12)),
        (lambda: leanconv.DepthwiseConv2d(4, 8, 3, stride=2, padding=1, dtype=F64), (9, 9)),
        (lambda: leanconv.ConvTranspose2d(4, 6, 3, stride=2, padding="same", groups=2, dtype=F64), (5, 6)),
        (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, bias=False, dtype=F64), (5, 6)),
    ],
)
@pytest.mark.parametrize("affine", [True, False])
def test_fuse_conv_bn_modules(make_conv, size, affine):
    conv = make_conv()
    bn = random_bn(conv.out_channels, affine)
    conv_state = copy.deepcopy(conv.state_dict())
    x = torch.randn(2, 4, *size, dtype=F64)
    with torch.no_grad():
        expected = bn(conv(x))
        fused = fuse_conv_bn(conv, bn)
        assert type(fused) is type(conv) and fused.bias is not None and fused is not conv
        for attr in ("padding", "padding_mode", "dynamic_same", "crop_end", "stride", "dilation", "groups"):
            assert getattr(fused, attr, None) == getattr(conv, attr, None)
        torch.testing.assert_close(fused(x), expected)
    assert all(torch.equal(conv_state[k], v) for k, v in conv.state_dict().items())


def test_fuse_conv_bn_invalid():
    with pytest.raises(ValueError, match="bn.num_features=5 must equal conv.out_channels=6"):
        fuse_conv_bn(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fuse_conv_bn(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(ValueError, match="bn=GroupNorm must be a BatchNorm"):
        fuse_conv_bn(nn.Conv2d(3, 6, 3), nn.GroupNorm(2, 6))
    with pytest.raises(ValueError, match="model=int must be an nn.Module"):
        leanconv.fuse(3)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = leanconv.ConvNormAct(8, 8, 3, stride=2)
        self.sep = leanconv.DepthwiseSeparableConv2d(8, 16, 3, padding="same", dilation=2,
                                                     norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
        self.ac = leanconv.ACBlock(16, 16, 3, stride=2, padding="same", norm_layer=lambda c: nn.BatchNorm2d(c, affine=False))
        self.up = nn.Sequential(leanconv.ConvTranspose2d(16, 8, 3, stride=2, padding="same"), nn.BatchNorm2d(8))
        self.bottleneck = leanconv.Bottleneck(8, 8)

    def forward(self, x):
        return self.bottleneck(self.up(self.ac(self.sep(self.block(self.stem(x))))))


def test_fuse_model_keeps_output_and_input_model():
    model = randomize_norms(Nested().double()).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 15, 17, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused = leanconv.fuse(model)
        torch.testing.assert_close(fused(x), expected)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert isinstance(fused.ac, leanconv.Conv2d)
    check_traceable(fused, x)
    # the input model is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # inplace=True changes the given model itself
    same = leanconv.fuse(model, inplace=True)
    assert same is model and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_fuse_top_level_block_and_non_foldable_norms_stay():
    block = randomize_norms(leanconv.ACBlock(4, 4, 3, padding=1, dtype=F64)).eval()
    x = torch.randn(1, 4, 6, 6, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(leanconv.fuse(block)(x), block(x))
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4))
    fused = leanconv.fuse(model)
    assert isinstance(fused[1], nn.GroupNorm)  # not a BatchNorm: left as it is


def test_fuse_result_is_eval_and_input_mode_kept():
    model = nn.Sequential(leanconv.ConvNormAct(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    model.train()
    fused = leanconv.fuse(model)
    assert not any(m.training for m in fused.modules())
    assert all(m.training for m in model.modules())
    assert isinstance(fused[1][1], nn.Identity) and isinstance(fused[0].norm, nn.Identity)


class _NoArgFuse(nn.Module):
    """fuse() returns a Sequential whose conv -> BN pair is then folded too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, dtype=F64)
        self.norm = nn.BatchNorm2d(4, dtype=F64)

    def forward(self, x):
        return self.norm(self.conv(x))

    def fuse(self):
        return nn.Sequential(self.conv, self.norm)


class _InPlaceFuse(nn.Module):
    """fuse() returns None (in-place style): the module stays, its pair is still folded."""

    conv_norm_pairs = (("conv", "norm"), ("gone.conv", "gone.norm"))  # second path never resolves

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, dtype=F64)
        self.norm = nn.BatchNorm2d(4, dtype=F64)
        self.calls = 0

    def forward(self, x):
        return self.norm(self.conv(x))

    def fuse(self):
        self.calls += 1


class _ArgFuse(_NoArgFuse):
    def fuse(self, required):  # needs an argument: not a deployment fuse(), never called
        raise AssertionError("called")


class _Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fuse = nn.Conv2d(4, 4, 1, dtype=F64)  # a child *named* fuse is no fuse() method
        self.norm = nn.BatchNorm2d(4, dtype=F64)
        self.inner = nn.Sequential(_NoArgFuse(), _InPlaceFuse(), _ArgFuse())

    def forward(self, x):
        return self.inner(self.norm(self.fuse(x)))


def test_fuse_discovers_only_real_fuse_methods():
    model = randomize_norms(_Odd()).eval()
    x = torch.randn(2, 4, 6, 5, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused = leanconv.fuse(model)
        torch.testing.assert_close(fused(x), expected)
    # not a declared pair, but a conv -> BN edge of the traced forward: folded there (fuse along fx edges)
    assert isinstance(fused.fuse, nn.Conv2d) and isinstance(fused.norm, nn.Identity)
    first, second, third = fused.inner
    assert isinstance(first, nn.Sequential) and isinstance(first[1], nn.Identity)
    assert isinstance(second, _InPlaceFuse) and second.calls == 1 and isinstance(second.norm, nn.Identity)
    assert isinstance(third, _ArgFuse) and isinstance(third.norm, nn.Identity)  # folded along the traced forward
    assert model.inner[1].calls == 0  # the deep copy was fused, not the input


@pytest.mark.parametrize("kind", sorted(leanconv.KINDS))
def test_fuse_every_kind_in_a_conv_norm_act(kind):
    from leanconv.layers.blocks import KindConvNormAct

    kernel = 1 if kind == "pointwise" else 3
    model = randomize_norms(KindConvNormAct(kind, 8, 8, kernel, stride=2, padding="same", dtype=F64)).eval()
    x = torch.randn(2, 8, 9, 8, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        fused = leanconv.fuse(model)
        torch.testing.assert_close(fused(x), expected)
    if model.conv_norm_pairs:
        assert isinstance(fused.norm, nn.Identity)


def test_norm_after_a_multi_stage_layer_folds_into_its_last_stage():
    """ConvNormAct around a separable, asymmetric or Tucker-2 conv (what a conversion leaves):
    the BN folds into the layer's output stage; a reordering layer keeps its BN."""
    import leanconv

    x = torch.randn(2, 6, 11, 11)
    for conv in (leanconv.DepthwiseSeparableConv2d(6, 8, 3, padding=1, bias=False),
                 leanconv.DepthwiseSeparableConv2d(6, 8, 3, padding=1, bias=False, order="pointwise_first"),
                 leanconv.AsymmetricConv2d(6, 8, 3, padding=1, bias=False, order="1xk_first"),
                 leanconv.Tucker2Conv2d(6, 8, 3, padding=1, bias=False, ranks=(3, 4)),
                 leanconv.PermutedGroupedConv2d(6, 8, 3, padding=1, groups=2, bias=False)):
        block = leanconv.ConvNormAct(6, 8, 3, padding=1)
        block.conv = conv
        if isinstance(conv, leanconv.PermutedGroupedConv2d):
            conv.input_order.copy_(torch.randperm(6))
            conv.output_order.copy_(torch.randperm(8))
        randomize_norms(block).eval()
        with torch.no_grad():
            expected = block(x)
            fused = leanconv.fuse(block)
            torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
        folded = isinstance(fused.norm, nn.Identity)
        assert folded != isinstance(conv, leanconv.PermutedGroupedConv2d), type(conv).__name__
