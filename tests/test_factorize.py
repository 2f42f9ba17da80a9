"""Factorization math: exact at full rank, Eckart-Young error at lower rank, never beaten by
perturbing the factors; composed convs checked with explicit F.conv2d (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from leanconv.conversion import factorize

F64 = torch.float64
# float64 round-off: an exact factorization discards at most this share of the total energy
# (measured up to ~2e-16; a fixed absolute bound fails on larger kernels)
ROUNDOFF = 1e-12


def pad(x, ph, pw, mode):
    if ph == pw == 0:
        return x
    return F.pad(x, (pw, pw, ph, ph)) if mode == "zeros" else F.pad(x, (pw, pw, ph, ph), mode=mode)


def dense(x, w, stride, padding, dilation, mode, groups=1):
    return F.conv2d(pad(x, *padding, mode), w, None, stride, 0, dilation, groups)


configs = st.fixed_dictionaries({
    "kernel": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
})


@settings(max_examples=40)
@given(cfg=configs, c=st.integers(1, 4), o=st.integers(1, 5), g=st.sampled_from([1, 2]))
def test_dsconv_full_rank_is_exact(cfg, c, o, g):
    c, o = c * g, o * g
    kh, kw = cfg["kernel"]
    w = torch.randn(o, c // g, kh, kw, dtype=F64)
    m = min(o // g, kh * kw)
    result = factorize.dsconv(w, m, groups=g)
    assert result.discarded_energy == pytest.approx(0, abs=ROUNDOFF * result.total_energy)
    x = torch.randn(2, c, 9, 10, dtype=F64)
    expected = dense(x, w, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"], g)
    y = dense(x, result.weights["depthwise"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"], c)
    torch.testing.assert_close(F.conv2d(y, result.weights["pointwise"], groups=g), expected)


def reconstruct_dsconv(result, c, g):
    d, p = result.weights["depthwise"], result.weights["pointwise"]
    m = d.shape[0] // c
    o = p.shape[0]
    w = torch.zeros(o, c // g, *d.shape[2:], dtype=d.dtype)
    for i in range(c):
        j, local = divmod(i, c // g)
        outs = slice(j * o // g, (j + 1) * o // g)
        for r in range(m):
            w[outs, local] += p[outs, local * m + r, 0, 0][:, None, None] * d[i * m + r, 0]
    return w


@pytest.mark.parametrize("m, g", [(1, 1), (2, 1), (1, 2)])
def test_dsconv_error_is_discarded_energy_and_optimal(m, g):
    torch.manual_seed(1)
    c, o = 4, 6
    w = torch.randn(o, c // g, 3, 3, dtype=F64)
    result = factorize.dsconv(w, m, groups=g)
    error = float((w - reconstruct_dsconv(result, c, g)).pow(2).sum())
    assert error == pytest.approx(result.discarded_energy, rel=1e-9)
    # Eckart-Young per channel: the sum of the squared discarded singular values
    expected = 0.0
    for i in range(c):
        j, local = divmod(i, c // g)
        s = torch.linalg.svdvals(w[j * o // g:(j + 1) * o // g, local].reshape(o // g, 9))
        expected += float((s[m:] ** 2).sum())
    assert result.discarded_energy == pytest.approx(expected, rel=1e-12)
    for _ in range(20):  # no perturbation of the factors does better
        noisy = factorize.Factorization({k: v + 1e-3 * torch.randn_like(v) for k, v in result.weights.items()}, 0, 0)
        assert float((w - reconstruct_dsconv(noisy, c, g)).pow(2).sum()) >= error


@settings(max_examples=40)
@given(cfg=configs, c=st.integers(1, 4), o=st.integers(1, 4))
def test_asymmetric_full_rank_is_exact_with_stage_placement(cfg, c, o):
    kh, kw = cfg["kernel"]
    w = torch.randn(o, c, kh, kw, dtype=F64)
    result = factorize.asymmetric(w, min(c * kh, o * kw))
    assert result.discarded_energy == pytest.approx(0, abs=ROUNDOFF * result.total_energy)
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["padding"], cfg["dilation"]
    x = torch.randn(1, c, 9, 8, dtype=F64)
    expected = dense(x, w, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"])
    # stage 1 takes the height's stride/padding/dilation, stage 2 the width's (DESIGN.md)
    y = dense(x, result.weights["conv_kx1"], (sh, 1), (ph, 0), (dh, 1), cfg["mode"])
    y = dense(y, result.weights["conv_1xk"], (1, sw), (0, pw), (1, dw), cfg["mode"])
    torch.testing.assert_close(y, expected)


def test_asymmetric_low_rank_error_and_optimality():
    w = torch.randn(5, 4, 3, 3, dtype=F64)
    result = factorize.asymmetric(w, 2)
    a, b = result.weights["conv_kx1"], result.weights["conv_1xk"]
    composed = torch.einsum("okw,kch->ochw", b[:, :, 0], a[..., 0])
    error = float((w - composed).pow(2).sum())
    s = torch.linalg.svdvals(w.permute(1, 2, 0, 3).reshape(12, 15))
    assert error == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-9) == pytest.approx(result.discarded_energy)
    for _ in range(20):
        a2, b2 = a + 1e-3 * torch.randn_like(a), b + 1e-3 * torch.randn_like(b)
        assert float((w - torch.einsum("okw,kch->ochw", b2[:, :, 0], a2[..., 0])).pow(2).sum()) >= error


def test_asymmetric_depthwise_is_exact_for_separable_kernels():
    col, row = torch.randn(6, 5, dtype=F64), torch.randn(6, 3, dtype=F64)
    w = torch.einsum("ch,cw->chw", col, row).unsqueeze(1)
    result = factorize.asymmetric_depthwise(w)
    assert result.discarded_energy == pytest.approx(0, abs=ROUNDOFF * result.total_energy)
    x = torch.randn(1, 6, 11, 9, dtype=F64)
    y = F.conv2d(F.conv2d(x, result.weights["conv_kx1"], padding=(2, 0), groups=6),
                 result.weights["conv_1xk"], padding=(0, 1), groups=6)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=(2, 1), groups=6))


@pytest.mark.parametrize("ranks", [(4, 6), (2, 3)])
def test_tucker2_exact_at_full_rank_and_hooi_never_worse(ranks):
    w = torch.randn(6, 4, 3, 3, dtype=F64)
    result = factorize.tucker2(w, ranks)
    red, core, exp = result.weights["reduce"], result.weights["core"], result.weights["expand"]
    composed = torch.einsum("os,srhw,rc->ochw", exp[:, :, 0, 0], core, red[:, :, 0, 0])
    error = float((w - composed).pow(2).sum())
    assert error == pytest.approx(result.discarded_energy, abs=1e-9)
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    y = F.conv2d(F.conv2d(F.conv2d(x, red), core, stride=2, padding=1), exp)
    torch.testing.assert_close(y, F.conv2d(x, composed, stride=2, padding=1))
    if ranks == (4, 6):
        assert error == pytest.approx(0, abs=ROUNDOFF * float(w.pow(2).sum()))
    else:
        assert factorize.tucker2(w, ranks, hooi_iterations=5).discarded_energy <= result.discarded_energy + 1e-12


def test_grouped_keeps_the_block_diagonal():
    w = torch.randn(6, 4, 3, 3, dtype=F64)
    result = factorize.grouped(w, 2)
    mask = torch.zeros_like(w)
    mask[:3, :2] = 1
    mask[3:, 2:] = 1
    assert result.discarded_energy == pytest.approx(float((w * (1 - mask)).pow(2).sum()))
    x = torch.randn(1, 4, 7, 7, dtype=F64)
    torch.testing.assert_close(F.conv2d(x, result.weights["weight"], groups=2), F.conv2d(x, w * mask))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: factorize.dsconv(torch.zeros(3, 3), 1), "weight must be a 4-D conv weight"),
        (lambda: factorize.dsconv(torch.zeros(4, 2, 3, 3), 0), "depth_multiplier=0 must be >= 1"),
        (lambda: factorize.dsconv(torch.zeros(5, 2, 3, 3), 1, groups=2), "out_channels=5 must be divisible by groups=2"),
        (lambda: factorize.asymmetric(torch.zeros(4, 2, 3, 3), 0), "mid_channels=0 must be >= 1"),
        (lambda: factorize.asymmetric_depthwise(torch.zeros(4, 2, 3, 3)), "must be depthwise"),
        (lambda: factorize.tucker2(torch.zeros(4, 2, 3, 3), (2,)), "ranks=.* must be a pair"),
        (lambda: factorize.grouped(torch.zeros(4, 3, 3, 3), 2), "in_channels=3 must be divisible by groups=2"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@settings(max_examples=25)
@given(cfg=configs, c=st.integers(1, 3), o=st.integers(1, 3))
def test_asymmetric_1xk_first_full_rank_is_exact(cfg, c, o):
    kh, kw = cfg["kernel"]
    w = torch.randn(o, c, kh, kw, dtype=F64)
    result = factorize.asymmetric(w, min(c * kw, o * kh), order="1xk_first")
    assert result.weights["conv_1xk"].shape == (min(c * kw, o * kh), c, 1, kw)
    assert result.weights["conv_kx1"].shape == (o, min(c * kw, o * kh), kh, 1)
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["padding"], cfg["dilation"]
    x = torch.randn(1, c, 9, 8, dtype=F64)
    expected = dense(x, w, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"])
    y = dense(x, result.weights["conv_1xk"], (1, sw), (0, pw), (1, dw), cfg["mode"])
    y = dense(y, result.weights["conv_kx1"], (sh, 1), (ph, 0), (dh, 1), cfg["mode"])
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="order='diagonal' must be one of"):
        factorize.asymmetric(w, 1, order="diagonal")


@settings(max_examples=30)
@given(cfg=configs, c=st.integers(1, 4), o=st.integers(1, 4), g=st.sampled_from([1, 2]))
def test_dsconv_pointwise_first_full_rank_is_exact(cfg, c, o, g):
    """The dual: pointwise C -> O*m (groups g), then kxk O*m -> O with groups O."""
    c, o = c * g, o * g
    kh, kw = cfg["kernel"]
    w = torch.randn(o, c // g, kh, kw, dtype=F64)
    m = min(c // g, kh * kw)
    result = factorize.dsconv(w, m, groups=g, order="pointwise_first")
    assert result.discarded_energy == pytest.approx(0, abs=ROUNDOFF * result.total_energy)
    assert result.weights["pointwise"].shape == (o * m, c // g, 1, 1)
    assert result.weights["depthwise"].shape == (o, m, kh, kw)
    x = torch.randn(2, c, 9, 10, dtype=F64)
    expected = dense(x, w, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"], g)
    mixed = F.conv2d(x, result.weights["pointwise"], groups=g)  # no bias: commutes with any padding
    y = dense(mixed, result.weights["depthwise"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["mode"], o)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("m, g", [(1, 1), (2, 1), (1, 2)])
def test_dsconv_pointwise_first_error_is_per_output_eckart_young(m, g):
    torch.manual_seed(2)
    c, o = 6, 4
    w = torch.randn(o, c // g, 3, 3, dtype=F64)
    result = factorize.dsconv(w, m, groups=g, order="pointwise_first")
    p, d = result.weights["pointwise"][:, :, 0, 0], result.weights["depthwise"]
    rebuilt = torch.einsum("ojc,ojhw->ochw", p.reshape(o, m, c // g), d)
    error = float((w - rebuilt).pow(2).sum())
    expected = sum(float((torch.linalg.svdvals(w[i].reshape(c // g, 9))[m:] ** 2).sum()) for i in range(o))
    assert error == pytest.approx(result.discarded_energy, rel=1e-9)
    assert result.discarded_energy == pytest.approx(expected, rel=1e-12)
    for _ in range(20):  # no perturbation of the factors does better
        noisy_p = p + 1e-3 * torch.randn_like(p)
        noisy_d = d + 1e-3 * torch.randn_like(d)
        noisy = torch.einsum("ojc,ojhw->ochw", noisy_p.reshape(o, m, c // g), noisy_d)
        assert float((w - noisy).pow(2).sum()) >= error


def test_tucker2_asymmetric_core_exact_at_full_rank_and_errors_add():
    torch.manual_seed(4)
    o, c, kh, kw = 6, 5, 3, 3
    w = torch.randn(o, c, kh, kw, dtype=F64)
    full = factorize.tucker2(w, (c, o), core_mid_channels=min(c * kh, o * kw))
    assert set(full.weights) == {"reduce", "core.conv_kx1", "core.conv_1xk", "expand"}
    x = torch.randn(2, c, 9, 8, dtype=F64)

    def run(weights, stride=(2, 1), padding=(1, 1)):
        y = F.conv2d(x, weights["reduce"])
        y = F.conv2d(y, weights["core.conv_kx1"], stride=(stride[0], 1), padding=(padding[0], 0))
        y = F.conv2d(y, weights["core.conv_1xk"], stride=(1, stride[1]), padding=(0, padding[1]))
        return F.conv2d(y, weights["expand"])

    torch.testing.assert_close(run(full.weights), F.conv2d(x, w, stride=(2, 1), padding=1))
    assert full.discarded_energy == pytest.approx(0, abs=ROUNDOFF * full.total_energy)
    low = factorize.tucker2(w, (3, 4), core_mid_channels=2)
    a, b = low.weights["core.conv_kx1"][..., 0], low.weights["core.conv_1xk"][:, :, 0]  # (K, r1, kh), (r2, K, kw)
    core_hat = torch.einsum("krh,skw->srhw", a, b)
    rebuilt = torch.einsum("os,srhw,rc->ochw", low.weights["expand"][:, :, 0, 0], core_hat,
                           low.weights["reduce"][:, :, 0, 0])
    assert float((w - rebuilt).pow(2).sum()) == pytest.approx(low.discarded_energy, rel=1e-9)
    plain = factorize.tucker2(w, (3, 4))
    core_split = factorize.asymmetric(plain.weights["core"], 2)
    assert low.discarded_energy == pytest.approx(plain.discarded_energy + core_split.discarded_energy, rel=1e-12)


def test_grouped_permutation_finds_hidden_blocks_and_never_keeps_less():
    torch.manual_seed(5)
    o, c, g = 8, 6, 2
    hidden = torch.zeros(o, c, 3, 3, dtype=F64)
    hidden[:4, :3] = torch.randn(4, 3, 3, 3, dtype=F64)
    hidden[4:, 3:] = torch.randn(4, 3, 3, 3, dtype=F64)
    out_perm, in_perm = torch.randperm(o), torch.randperm(c)
    w = hidden[out_perm][:, in_perm]  # block structure scrambled
    result = factorize.grouped(w, g, permute=True)
    assert result.discarded_energy == pytest.approx(0, abs=1e-10 * result.total_energy)
    assert factorize.grouped(w, g).discarded_energy > 1.0
    # the permuted grouped conv (inputs reordered, outputs put back) equals the dense conv
    x = torch.randn(2, c, 7, 7, dtype=F64)
    y = F.conv2d(x[:, result.buffers["input_order"]], result.weights["weight"], groups=g, padding=1)
    restored = torch.empty_like(y)
    restored[:, result.buffers["output_order"]] = y
    torch.testing.assert_close(restored, F.conv2d(x, w, padding=1))
    for seed in range(5):  # on random kernels: never less energy kept than the plain block diagonal
        torch.manual_seed(seed)
        w = torch.randn(8, 8, 3, 3, dtype=F64)
        assert factorize.grouped(w, 4, permute=True).discarded_energy <= factorize.grouped(w, 4).discarded_energy


def test_reused_decompositions_give_the_same_factorizations_and_see_in_place_changes():
    """Inside reuse_decompositions every rank reads one decomposition per kernel: the same
    weights and energies as a fresh call, and a weight changed in place is decomposed again."""
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    calls = [lambda r: factorize.dsconv(w, r), lambda r: factorize.dsconv(w, r, order="pointwise_first"),
             lambda r: factorize.asymmetric(w, r), lambda r: factorize.asymmetric(w, r, order="1xk_first"),
             lambda r: factorize.tucker2(w, (r, r + 1))]
    for call in calls:
        for r in (1, 2, 3):
            plain = call(r)
            with factorize.reuse_decompositions():
                first, again = call(r), call(r)
            for result in (first, again):
                assert result.discarded_energy == pytest.approx(plain.discarded_energy, rel=1e-9, abs=1e-9)
                assert sorted(result.weights) == sorted(plain.weights)
                for name in plain.weights:
                    torch.testing.assert_close(result.weights[name], plain.weights[name])
    reference = torch.linalg.svdvals(w.permute(1, 2, 0, 3).reshape(12, 18))  # independent: LAPACK's SVD
    with factorize.reuse_decompositions():
        assert factorize.asymmetric(w, 2).discarded_energy == pytest.approx(float((reference[2:] ** 2).sum()))
        w.mul_(2)
        assert factorize.asymmetric(w, 2).discarded_energy == pytest.approx(4 * float((reference[2:] ** 2).sum()))
