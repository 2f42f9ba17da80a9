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
from leanconv.fuse import add_branches, fold_bn, fuse_conv_bn, merge_1x1_kxk, pad_kernel
from support import randomize_norms

F64 = torch.float64


def bn_eval(y, mean, var, eps, gamma, beta):
    return F.batch_norm(y, mean, var, gamma, beta, training=False, eps=eps)


def random_bn(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    return randomize_norms(nn.BatchNorm2d(channels, affine=affine, dtype=F64)).eval()


@settings(max_examples=40)
@given(
    groups=st.sampled_from([1, 2, "depthwise"]),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    affine=st.booleans(),
    with_bias=st.booleans(),
)
def test_fold_bn_conv(groups, stride, dilation, affine, with_bias):
    c, o = 4, 8
    g = c if groups == "depthwise" else groups
    w = torch.randn(o, c // g, 3, 3, dtype=F64)
    b = torch.randn(o, dtype=F64) if with_bias else None
    bn = random_bn(o, affine)
    x = torch.randn(2, c, 9, 10, dtype=F64)
    expected = bn_eval(F.conv2d(x, w, b, stride, 1, dilation, g), bn.running_mean, bn.running_var,
                       bn.eps, bn.weight, bn.bias)
    fw, fb = fold_bn(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    torch.testing.assert_close(F.conv2d(x, fw, fb, stride, 1, dilation, g), expected)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_bn_transposed(groups, affine):
    c, o = 4, 8
    w = torch.randn(c, o // groups, 3, 3, dtype=F64)  # transposed layout (C_in, O/g, kh, kw)
    b = torch.randn(o, dtype=F64)
    bn = random_bn(o, affine)
    x = torch.randn(2, c, 5, 6, dtype=F64)
    expected = bn_eval(F.conv_transpose2d(x, w, b, 2, 1, 1, groups), bn.running_mean, bn.running_var,
                       bn.eps, bn.weight, bn.bias)
    fw, fb = fold_bn(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
                     transposed=True, groups=groups)
    torch.testing.assert_close(F.conv_transpose2d(x, fw, fb, 2, 1, 1, groups), expected)


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
def test_merge_1x1_kxk(with_b1):
    c, m, o = 3, 4, 5
    w1, w2 = torch.randn(m, c, 1, 1, dtype=F64), torch.randn(o, m, 3, 3, dtype=F64)
    b1 = torch.randn(m, dtype=F64) if with_b1 else None
    b2 = torch.randn(o, dtype=F64)
    x = torch.randn(2, c, 7, 9, dtype=F64)
    expected = F.conv2d(F.conv2d(x, w1, b1), w2, b2, 2)
    w, b = merge_1x1_kxk(w1, b1, w2, b2)
    torch.testing.assert_close(F.conv2d(x, w, b, 2), expected)
    with pytest.raises(ValueError, match="w1 must be a 1x1 kernel"):
        merge_1x1_kxk(w2, None, w2, None)


@pytest.mark.parametrize(
    "make_conv, size",
    [
        (lambda: leanconv.Conv2d(4, 6, 3, stride=2, padding="same", dtype=F64), (9, 10)),
        (lambda: leanconv.Conv2d(4, 6, (3, 5), padding="same", dilation=2, padding_mode="reflect", dtype=F64), (11, 12)),
        (lambda: leanconv.DepthwiseConv2d(4, 8, 3, stride=2, padding=1, dtype=F64), (9, 9)),
        (lambda: leanconv.ConvTranspose2d(4, 6, 3, stride=2, padding="same", groups=2, dtype=F64), (5, 6)),
        (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, bias=False, dtype=F64), (5, 6)),
    ],
)
def test_fuse_conv_bn_modules(make_conv, size):
    conv = make_conv()
    bn = random_bn(conv.out_channels)
    x = torch.randn(2, 4, *size, dtype=F64)
    with torch.no_grad():
        expected = bn(conv(x))
        fused = fuse_conv_bn(conv, bn)
        assert type(fused) is type(conv) and fused.bias is not None
        torch.testing.assert_close(fused(x), expected)


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
