"""SqueezeExcite and CBAM against explicit torch.nn.functional compositions in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leanconv.layers.attention import CBAM, ChannelGate, SpatialGate, SqueezeExcite
from support import check_traceable, randomize_norms

F64 = torch.float64


# ----------------------------------------------------------------------------- SqueezeExcite


def se_ref(m: SqueezeExcite, x, act=F.relu, gate=torch.sigmoid):
    s = x.mean(dim=(2, 3), keepdim=True)
    s = F.conv2d(s, m.reduce.weight, m.reduce.bias)
    s = F.conv2d(act(s), m.expand.weight, m.expand.bias)
    return x * gate(s)


@settings(max_examples=25)
@given(c=st.integers(1, 24), reduction=st.integers(1, 8), h=st.integers(1, 6), w=st.integers(1, 6))
def test_squeeze_excite_reference(c, reduction, h, w):
    m = SqueezeExcite(c, reduction, dtype=F64)
    assert m.rd_channels == max(1, round(c / reduction))
    x = torch.randn(2, c, h, w, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), se_ref(m, x))


def test_squeeze_excite_options_and_structure():
    m = SqueezeExcite(12, rd_channels=5, act_layer=nn.SiLU, gate_layer=nn.Hardsigmoid, dtype=F64)
    assert m.reduce.weight.shape == (5, 12, 1, 1) and m.expand.weight.shape == (12, 5, 1, 1)
    assert set(m.state_dict()) == {"reduce.weight", "reduce.bias", "expand.weight", "expand.bias"}
    assert sum(p.numel() for p in m.parameters()) == 2 * 12 * 5 + 12 + 5
    x = torch.randn(3, 12, 4, 5, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), se_ref(m, x, F.silu, F.hardsigmoid))
    assert SqueezeExcite(64).rd_channels == 16
    assert SqueezeExcite(3).rd_channels == 1  # round(0.75)
    assert SqueezeExcite(2, reduction=16).rd_channels == 1  # never 0
    assert SqueezeExcite(10, reduction=0.5).rd_channels == 20
    assert isinstance(SqueezeExcite(8, act_layer=None).act, nn.Identity)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction=0), "reduction=0"),
        (dict(reduction=-2), "reduction=-2"),
        (dict(reduction="4"), "reduction='4'"),
        (dict(reduction=True), "reduction=True"),
        (dict(rd_channels=0), "rd_channels=0"),
        (dict(channels=0), "channels=0"),
        (dict(act_layer=3), "act_layer=3"),
        (dict(gate_layer=None), "gate_layer=None"),
    ],
)
def test_squeeze_excite_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SqueezeExcite(**(dict(channels=8) | kwargs))


def test_squeeze_excite_wrong_input_and_traceable():
    m = SqueezeExcite(8)
    with pytest.raises(ValueError, match="input has 6 channels, expected 8"):
        m(torch.randn(1, 6, 4, 4))
    check_traceable(m, torch.randn(2, 8, 5, 3))


# ----------------------------------------------------------------------------- CBAM references


def cbam_paper_ref(m: CBAM, x, training: bool, running_mean, running_var):
    """The authors' code path: Linear MLP with bias on avg and max vectors; (max, mean); conv + BN."""
    mlp = m.channel_gate.mlp

    def shared_mlp(v):
        return F.linear(F.relu(F.linear(v, mlp.reduce.weight, mlp.reduce.bias)), mlp.expand.weight, mlp.expand.bias)

    n, c = x.shape[:2]
    avg = F.avg_pool2d(x, x.shape[-2:]).view(n, c)
    peak = F.max_pool2d(x, x.shape[-2:]).view(n, c)
    x = x * torch.sigmoid(shared_mlp(avg) + shared_mlp(peak)).view(n, c, 1, 1)
    pooled = torch.cat((x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)), dim=1)
    k = m.spatial_gate.conv.weight.shape[-1]
    s = F.conv2d(pooled, m.spatial_gate.conv.weight, None, padding=(k - 1) // 2)
    bn = m.spatial_gate.norm
    s = F.batch_norm(s, running_mean, running_var, bn.weight, bn.bias, training, 0.01, 1e-5)
    return x * torch.sigmoid(s)


def cbam_common_ref(m: CBAM, x):
    """The widespread variant: bias-free 1x1 conv MLP; (mean, max); conv without BN."""
    mlp = m.channel_gate.mlp

    def shared_mlp(v):
        return F.conv2d(F.relu(F.conv2d(v, mlp.reduce.weight)), mlp.expand.weight)

    gate = shared_mlp(x.mean(dim=(2, 3), keepdim=True)) + shared_mlp(x.amax(dim=(2, 3), keepdim=True))
    x = x * torch.sigmoid(gate)
    pooled = torch.cat((x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values), dim=1)
    k = m.spatial_gate.conv.weight.shape[-1]
    return x * torch.sigmoid(F.conv2d(pooled, m.spatial_gate.conv.weight, None, padding=(k - 1) // 2))


@settings(max_examples=25)
@given(
    c=st.integers(1, 40), reduction=st.integers(1, 16), kernel=st.sampled_from([1, 3, 5, 7]),
    h=st.integers(1, 7), w=st.integers(1, 7), variant=st.sampled_from(["paper", "common"]),
)
def test_cbam_reference_eval(c, reduction, kernel, h, w, variant):
    m = CBAM(c, reduction, kernel, variant, dtype=F64)
    randomize_norms(m).eval()
    assert m.hidden == max(1, c // reduction)
    x = torch.randn(2, c, h, w, dtype=F64)
    with torch.no_grad():
        y = m(x)
        if variant == "paper":
            bn = m.spatial_gate.norm
            ref = cbam_paper_ref(m, x, False, bn.running_mean, bn.running_var)
        else:
            ref = cbam_common_ref(m, x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref)


def test_cbam_paper_train_mode_matches_reference_and_running_stats():
    m = randomize_norms(CBAM(32, dtype=F64)).train()
    bn = m.spatial_gate.norm
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(4, 32, 6, 5, dtype=F64)
    with torch.no_grad():
        ref = cbam_paper_ref(m, x, True, running_mean, running_var)  # updates the clones in place
        y = m(x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(bn.running_mean, running_mean)
    torch.testing.assert_close(bn.running_var, running_var)
    assert bn.momentum == 0.01 and bn.eps == 1e-5


def test_cbam_structure_state_dict_and_params():
    paper = CBAM(64, reduction=16)
    assert isinstance(paper.channel_gate.mlp.reduce, nn.Linear) and paper.channel_gate.mlp.reduce.out_features == 4
    assert isinstance(paper.spatial_gate.norm, nn.BatchNorm2d)
    assert set(paper.state_dict()) == {
        "channel_gate.mlp.reduce.weight", "channel_gate.mlp.reduce.bias",
        "channel_gate.mlp.expand.weight", "channel_gate.mlp.expand.bias",
        "spatial_gate.conv.weight", "spatial_gate.norm.weight", "spatial_gate.norm.bias",
        "spatial_gate.norm.running_mean", "spatial_gate.norm.running_var", "spatial_gate.norm.num_batches_tracked",
    }
    assert sum(p.numel() for p in paper.parameters()) == 2 * 64 * 4 + 4 + 64 + 2 * 7 * 7 + 2
    common = CBAM(64, reduction=16, variant="common")
    assert isinstance(common.spatial_gate.norm, nn.Identity)
    assert set(common.state_dict()) == {
        "channel_gate.mlp.reduce.weight", "channel_gate.mlp.expand.weight", "spatial_gate.conv.weight",
    }
    assert sum(p.numel() for p in common.parameters()) == 2 * 64 * 4 + 2 * 7 * 7
    assert SpatialGate.conv_norm_pairs == (("conv", "norm"),)
    assert CBAM(8, reduction=16).hidden == 1
    assert CBAM(8, kernel_size=(3, 5)).spatial_gate.conv.padding == (1, 2)


def test_cbam_spatial_gate_conv_norm_pair_folds_exactly():
    m = randomize_norms(CBAM(6, reduction=2, dtype=F64)).eval()
    x = torch.randn(2, 6, 5, 5, dtype=F64)
    folded = copy.deepcopy(m)
    gate = folded.spatial_gate
    with torch.no_grad():
        scale = gate.norm.weight / torch.sqrt(gate.norm.running_var + gate.norm.eps)
        gate.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        gate.conv.bias = nn.Parameter(gate.norm.bias - gate.norm.running_mean * scale)
        gate.norm = nn.Identity()
        torch.testing.assert_close(folded(x), m(x))


def test_cbam_pooling_order_matters():
    """The two variants differ in the (max, mean) vs (mean, max) order: swapping the conv's input
    channels of one variant's weights reproduces the other's spatial logits."""
    paper = SpatialGate(3, "paper", dtype=F64)
    common = SpatialGate(3, "common", dtype=F64)
    with torch.no_grad():
        common.conv.weight.copy_(paper.conv.weight.flip(1))
        x = torch.randn(2, 4, 5, 5, dtype=F64)
        torch.testing.assert_close(paper.norm.eval()(paper.conv(torch.cat((x.amax(1, True), x.mean(1, True)), 1))),
                                   paper.norm(common.conv(torch.cat((x.mean(1, True), x.amax(1, True)), 1))))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction=0), "reduction=0"),
        (dict(channels=0), "channels=0"),
        (dict(kernel_size=4), "kernel_size=4 must be odd"),
        (dict(kernel_size=(7, 6)), r"kernel_size=\(7, 6\) must be odd"),
        (dict(kernel_size=0), "kernel_size=0"),
        (dict(variant="keras"), "variant='keras'"),
        (dict(reduction=2.0), "reduction=2.0"),
    ],
)
def test_cbam_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CBAM(**(dict(channels=16) | kwargs))


def test_cbam_gate_invalid_arguments():
    with pytest.raises(ValueError, match="variant='x'"):
        ChannelGate(8, 2, "x")
    with pytest.raises(ValueError, match="hidden=0"):
        ChannelGate(8, 0)


def test_cbam_wrong_input():
    m = CBAM(16)
    with pytest.raises(ValueError, match="input has 8 channels, expected 16"):
        m(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="must be 4-D"):
        m(torch.randn(16, 4, 4))
    with pytest.raises(ValueError, match="must be 4-D"):
        SpatialGate()(torch.randn(16, 4))


@pytest.mark.parametrize("variant", ["paper", "common"])
def test_cbam_traceable(variant):
    m = randomize_norms(CBAM(32, variant=variant))
    check_traceable(m, torch.randn(2, 32, 6, 7), compile=variant == "paper")
