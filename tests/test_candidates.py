"""Per-layer conversion candidates: the list (MACs against closed forms and FlopCounterMode, which
kinds apply) and each candidate's error (exact at full rank, the discarded singular energy
without data, a held-out output error against F.conv2d with data)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from leanconv.conversion.candidates import Candidate, CandidateFit, fit_candidate, layer_candidates, searched_kinds
from leanconv.conversion.surgery import build_module, factorize_conv

F64 = torch.float64
HW = (16, 16)


def conv3x3(c: int = 64, o: int = 64, **kw) -> nn.Conv2d:
    return nn.Conv2d(c, o, 3, padding=1, **kw)


def by_label(candidates):
    return {c.label: c for c in candidates}


def flop_macs(module: nn.Module, shape) -> int:
    """MACs of one forward, counted by torch (FlopCounterMode reports 2 x MACs for convs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(shape))
    return counter.get_total_flops() // 2


def rel(outputs, targets) -> float:
    num = sum(float((o.double() - t.double()).pow(2).sum()) for o, t in zip(outputs, targets))
    return math.sqrt(num / sum(float(t.double().pow(2).sum()) for t in targets))


def reference(conv: nn.Conv2d, xs):
    with torch.no_grad():
        return [F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups) for x in xs]


def run(module: nn.Module, xs):
    with torch.no_grad():
        return [module.eval()(x) for x in xs]


# --------------------------------------------------------------------------- the list


def test_candidates_of_a_3x3_conv_save_macs_by_the_closed_forms():
    conv = conv3x3()
    candidates = layer_candidates(conv, HW)
    c = o = 64
    hw = HW[0] * HW[1]
    dense = c * o * 9 * hw
    assert candidates[0] == Candidate("dense", {}, dense, "dense") and candidates[0].dense
    assert len(candidates) > 1 and not any(cand.dense for cand in candidates[1:])
    assert len({cand.label for cand in candidates}) == len(candidates)
    assert {cand.kind for cand in candidates[1:]} == {"dsconv", "tucker2", "asymmetric", "grouped"}
    for cand in candidates[1:]:
        assert cand.macs < dense, cand.label
        module = build_module(conv, cand.kind, cand.options)
        assert cand.macs == flop_macs(module, (1, c, *HW)), cand.label
    labels = by_label(candidates)
    closed = {
        "dsconv m=1": (c * 9 + c * o) * hw,
        "dsconv m=2 pointwise_first": (c * o * 2 + o * 2 * 9) * hw,
        "tucker2 (8, 8)": (c * 8 + 8 * 8 * 9 + 8 * o) * hw,
        "tucker2 (16, 16) asym core": (c * 16 + 16 * 16 * 3 + 16 * 16 * 3 + 16 * o) * hw,
        "asymmetric mid=16 1xk_first": (c * 16 * 3 + 16 * o * 3) * hw,
        "grouped g=4 permuted": o * (c // 4) * 9 * hw,
        "grouped g=8": o * (c // 8) * 9 * hw,
    }
    for label, macs in closed.items():
        assert labels[label].macs == macs, label
    assert labels["grouped g=4 permuted"].options == {"groups": 4, "permute": True}
    assert labels["tucker2 (16, 16) asym core"].options == {"ranks": (16, 16), "core": "asymmetric",
                                                            "core_mid_channels": 16}


def test_each_searched_ladder_is_short():
    candidates = layer_candidates(conv3x3(), HW)
    for kind in searched_kinds():
        assert 0 < sum(cand.kind == kind for cand in candidates) <= 6, kind


def test_kinds_restrict_the_search_and_unknown_kinds_are_named():
    conv = conv3x3()
    only = layer_candidates(conv, HW, kinds=["dsconv"])
    assert only[0].dense and {cand.kind for cand in only[1:]} == {"dsconv"}
    assert len(only) == 5  # m = 1, 2 in both orders
    with pytest.raises(ValueError, match=r"kinds=\['nope'\].*dsconv"):
        layer_candidates(conv, HW, kinds=["nope"])
    with pytest.raises(ValueError, match="kinds"):
        layer_candidates(conv, HW, kinds=["dense"])


def test_candidates_keep_only_what_saves_macs():
    # 2 -> 2 at 3x3 (36 MACs a pixel): dsconv m=1 costs 2*9 + 2*2 = 22, m=2 costs 44
    labels = by_label(layer_candidates(conv3x3(2, 2), (8, 8)))
    assert "dsconv m=1" in labels and "dsconv m=2" not in labels and "dsconv m=2 pointwise_first" not in labels
    assert all(cand.macs < 2 * 2 * 9 * 64 for cand in labels.values() if not cand.dense)
    # a 1x1 conv: a depthwise 1x1 in front of the same 1x1 costs more; a grouped 1x1 less
    kinds = {cand.kind for cand in layer_candidates(nn.Conv2d(16, 16, 1), HW)}
    assert "dsconv" not in kinds and "grouped" in kinds and "asymmetric" not in kinds


def test_a_one_dimensional_kernel_gets_no_asymmetric_candidate():
    conv = nn.Conv2d(32, 32, (1, 3), padding=(0, 1))
    kinds = {cand.kind for cand in layer_candidates(conv, HW)}
    assert "asymmetric" not in kinds and "dsconv" in kinds
    assert not any("asym core" in cand.label for cand in layer_candidates(conv, HW))


def test_a_grouped_conv_gets_only_dsconv_candidates_with_its_groups_kept():
    conv = conv3x3(32, 64, groups=4)
    candidates = layer_candidates(conv, HW)
    assert candidates[0].macs == 64 * 8 * 9 * HW[0] * HW[1]
    assert len(candidates) > 1 and {cand.kind for cand in candidates[1:]} == {"dsconv"}
    x = torch.randn(2, 32, *HW)
    for cand in candidates[1:]:
        assert "groups" not in cand.options
        module, fit = fit_candidate(conv, cand)
        assert module.pointwise.groups == 4  # the 1x1 stage keeps the conv's groups, in either order
        assert run(module, [x])[0].shape == conv(x).shape
        assert cand.macs == flop_macs(module, (1, 32, *HW))


# --------------------------------------------------------------------------- the fit


def test_dense_is_a_copy_with_no_error():
    conv = conv3x3(8, 8)
    module, fit = fit_candidate(conv, layer_candidates(conv, HW)[0], [torch.randn(4, 8, 6, 6)])
    assert module is not conv and isinstance(module, nn.Conv2d)
    assert torch.equal(module.weight, conv.weight) and module.weight.data_ptr() != conv.weight.data_ptr()
    assert fit == CandidateFit(0.0, 0.0, 0.0, False)


@pytest.mark.parametrize("kind, options", [
    ("dsconv", {"depth_multiplier": 9, "order": "depthwise_first"}),
    ("tucker2", {"ranks": (16, 16)}),
])
def test_full_rank_is_exact(kind, options):
    conv = conv3x3(16, 16).double()
    xs = [torch.randn(2, 16, 7, 7, dtype=F64) for _ in range(4)]
    cand = Candidate(kind, options, 0, kind)
    module, fit = fit_candidate(conv, cand)
    assert fit.weight_error < 1e-6 and fit.error == fit.weight_error and math.isnan(fit.fitted_error)
    assert rel(run(module, xs), reference(conv, xs)) < 1e-6
    module, fit = fit_candidate(conv, cand, xs)
    assert fit.error < 1e-6 and fit.fitted_error < 1e-6


def test_without_inputs_the_error_is_the_discarded_singular_energy():
    conv = conv3x3(12, 20)
    w = conv.weight.detach().double()
    discarded = 0.0
    for i in range(w.shape[1]):  # input channel i: its (O x kh*kw) slice keeps its top singular value
        s = torch.linalg.svd(w[:, i].reshape(w.shape[0], -1), full_matrices=False).S
        discarded += float(s[1:].pow(2).sum())
    expected = math.sqrt(discarded / float(w.pow(2).sum()))
    module, fit = fit_candidate(conv, by_label(layer_candidates(conv, HW))["dsconv m=1"])
    assert fit.weight_error == pytest.approx(expected, rel=1e-6)
    assert fit.error == fit.weight_error and not fit.refit and math.isnan(fit.fitted_error)


def low_rank_conv(c: int, o: int) -> nn.Conv2d:
    """A conv whose kernel is a rank-1 dsconv (each input channel one spatial filter) plus noise."""
    conv = conv3x3(c, o).double()
    spatial = torch.randn(c, 1, 3, 3, dtype=F64)
    mixing = torch.randn(o, c, 1, 1, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(mixing * spatial.transpose(0, 1) + 0.3 * torch.randn(o, c, 3, 3, dtype=F64))
    return conv


def correlated_inputs(c: int, batches: int = 8, n: int = 2, size: int = 10):
    """Input batches whose channels are correlated (what a weight-space optimum ignores)."""
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(c, c, generator=g, dtype=F64) * torch.logspace(0, -2, c, dtype=F64)
    return [torch.einsum("dc,nchw->ndhw", mix, torch.randn(n, c, size, size, generator=g, dtype=F64))
            for _ in range(batches)]


@pytest.mark.parametrize("label", ["dsconv m=1", "tucker2 (4, 4)", "grouped g=4 permuted", "asymmetric mid=8"])
def test_the_refit_lowers_the_held_out_error_against_f_conv2d(label):
    conv = low_rank_conv(32, 32)
    xs = correlated_inputs(32)  # 16 images: the last 4 (two batches) are held out at holdout=0.25
    fit_part, held = xs[:6], xs[6:]
    cand = by_label(layer_candidates(conv, HW))[label]
    factors = factorize_conv(conv, cand.kind, cand.options)
    plain = build_module(conv, cand.kind, cand.options, factors)
    unrefit = rel(run(plain, held), reference(conv, held))
    module, fit = fit_candidate(conv, cand, xs)
    refit = rel(run(module, held), reference(conv, held))
    assert fit.error == pytest.approx(refit, rel=1e-9)
    assert fit.fitted_error == pytest.approx(rel(run(module, fit_part), reference(conv, fit_part)), rel=1e-9)
    assert math.isfinite(fit.error) and fit.error <= unrefit
    assert fit.refit and fit.error < unrefit, (fit, unrefit)
    assert fit.weight_error == pytest.approx(factors.relative_error)


@pytest.mark.parametrize("label", ["dsconv m=1", "grouped g=4 permuted"])
def test_targets_given_once_per_layer_fit_as_the_conv_computed_itself(label):
    conv = low_rank_conv(32, 32)
    xs = correlated_inputs(32, batches=3, n=5)  # 15 images: the held-out cut falls inside the last batch
    cand = by_label(layer_candidates(conv, HW))[label]
    with torch.no_grad():
        targets = [F.conv2d(x, conv.weight, conv.bias, padding=1) for x in xs]  # the conv's outputs, independently
    given, fit_given = fit_candidate(conv, cand, xs, targets=targets)
    computed, fit_computed = fit_candidate(conv, cand, xs)
    assert fit_given.error == pytest.approx(fit_computed.error, rel=1e-9)
    assert fit_given.fitted_error == pytest.approx(fit_computed.fitted_error, rel=1e-9)
    assert fit_given.refit == fit_computed.refit
    for a, b in zip(given.state_dict().values(), computed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_refit_that_raises_the_held_out_error_is_undone():
    # fit on inputs that excite 4 of the 16 channels, hold out images that excite all of them
    conv = low_rank_conv(16, 16)
    torch.manual_seed(3)
    narrow = torch.zeros(6, 16, 8, 8, dtype=F64)
    narrow[:, :4] = torch.randn(6, 4, 8, 8, dtype=F64)
    wide = torch.randn(2, 16, 8, 8, dtype=F64)
    cand = by_label(layer_candidates(conv, HW))["dsconv m=1"]
    plain = build_module(conv, cand.kind, cand.options, factorize_conv(conv, cand.kind, cand.options))
    module, fit = fit_candidate(conv, cand, [narrow, wide])
    assert not fit.refit
    assert fit.error == pytest.approx(rel(run(plain, [wide]), reference(conv, [wide])), rel=1e-9)
    assert torch.equal(module.pointwise.weight, plain.pointwise.weight)


def test_one_image_is_fitted_and_measured_on_itself():
    conv = low_rank_conv(8, 8)
    x = correlated_inputs(8, batches=1, n=1)
    module, fit = fit_candidate(conv, by_label(layer_candidates(conv, HW))["dsconv m=1"], x)
    assert fit.refit and fit.error == fit.fitted_error == pytest.approx(rel(run(module, x), reference(conv, x)))


def test_fit_candidate_leaves_the_conv_alone_and_checks_its_arguments():
    conv = low_rank_conv(8, 8)
    before = conv.weight.detach().clone()
    cand = by_label(layer_candidates(conv, HW))["dsconv m=1"]
    fit_candidate(conv, cand, correlated_inputs(8, batches=2))
    assert torch.equal(conv.weight, before)
    for holdout in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="holdout"):
            fit_candidate(conv, cand, correlated_inputs(8, batches=2), holdout=holdout)
    with pytest.raises(ValueError, match="channels"):
        fit_candidate(conv, cand, [torch.randn(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="nn.Conv2d"):
        layer_candidates(nn.ConvTranspose2d(8, 8, 3), HW)
