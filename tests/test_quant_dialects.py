"""Requantization dialects against compiled C++: the Xilinx ap_types themselves (apfixed) and the
TFLite/gemmlowp reference formulas written out in C++ here (tflite), plus exact-fraction closed forms.

One C++ program holds every case (one compile); it needs g++ and the ap_types headers from hls4ml.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from fractions import Fraction

import pytest
import torch

from leanconv.export.hls import find_ap_types
from leanconv.quant.dialects import (
    INT32_MAX,
    INT32_MIN,
    ApFixed,
    TFLite,
    apfixed_raw,
    check_factor,
    make_dialect,
    multiply_by_quantized_multiplier,
    narrow,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
    store,
    wrap_signed,
)

AP_TYPES = find_ap_types()
needs_cpp = pytest.mark.skipif(
    shutil.which("g++") is None or AP_TYPES is None,
    reason="needs g++ and the ap_types headers of the hls4ml package (pip install hls4ml)",
)

RNG = random.Random(6)
DOUBLES = [0.5, 0.1, -0.3, 0.9999999999, 1.0, -1.0, 1e-9, -1e-9, 0.7, 2.0**-31, -(2.0**-31), 1.25, -1.5]
DOUBLES += [RNG.uniform(-1, 1) for _ in range(40)] + [RNG.uniform(-1, 1) * 2.0**-RNG.randint(5, 30) for _ in range(20)]
ACCS = [0, 1, -1, 2, -2, 3, -3, INT32_MAX, INT32_MIN, INT32_MIN + 1, 1 << 30, -(1 << 30)]
ACCS += [RNG.randint(INT32_MIN, INT32_MAX) for _ in range(150)] + [RNG.randint(-5000, 5000) for _ in range(150)]
FACTORS = [1, 2, 3, (1 << 30), (1 << 31) - 1, (1 << 30) + 1, 255, 256]
FACTORS += [RNG.randint(1, (1 << 31) - 1) for _ in range(60)] + [RNG.randint(1, 1 << 12) for _ in range(20)]
PAIRS = [(a, f) for a in ACCS for f in RNG.sample(FACTORS, 4)] + [(2 * k + 1, 1 << 30) for k in range(-6, 6)]
STORES = [300, -3, 255, 256, -129, 127, 128, 70000, -70000, 0, 511]
TFL = [(INT32_MIN, INT32_MIN, 0), (INT32_MAX, INT32_MAX, 0), (INT32_MIN, 1 << 30, -1)]
TFL += [(RNG.randint(INT32_MIN, INT32_MAX), RNG.randint(1 << 30, (1 << 31) - 1), RNG.randint(-31, 0)) for _ in range(300)]
TFL += [(RNG.randint(-(1 << 20), 1 << 20), RNG.randint(1 << 30, (1 << 31) - 1), RNG.randint(1, 8)) for _ in range(50)]
TFL += [(RNG.randint(-5000, 5000), RNG.randint(1 << 30, (1 << 31) - 1), RNG.randint(-20, -1)) for _ in range(200)]
MULTIPLIERS = [0.5, 0.25, 1.0, 0.999999999, 2.0**-31 * 1.5, 3.0, 123.456] + [math.exp(RNG.uniform(-20, 3)) for _ in range(80)]

CPP = r"""
#include <cstdio>
#include <cstdint>
#include <cmath>
#include "ap_int.h"
#include "ap_fixed.h"

// TFLite / gemmlowp reference formulas (integer C++)
static int32_t srdhm(int32_t a, int32_t b) {
  bool overflow = a == b && a == INT32_MIN;
  int64_t ab = (int64_t)a * (int64_t)b;
  int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  int32_t high = (int32_t)((ab + nudge) / (1ll << 31));
  return overflow ? INT32_MAX : high;
}
static int32_t rdbpot(int32_t x, int e) {
  int32_t mask = (int32_t)((1ll << e) - 1);
  int32_t rem = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (rem > threshold ? 1 : 0);
}
static int32_t mbqm_double(int32_t x, int32_t q, int shift) {
  int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  return rdbpot(srdhm((int32_t)((int64_t)x * (1ll << left)), q), right);
}
static int32_t mbqm_single(int32_t x, int32_t q, int shift) {
  int64_t total = 31 - shift;
  return (int32_t)(((int64_t)x * q + (1ll << (total - 1))) >> total);
}
static void quantize_multiplier(double m, int32_t* q, int* shift) {
  double fraction = std::frexp(m, shift);
  int64_t fixed = (int64_t)std::round(fraction * (double)(1ll << 31));
  if (fixed == (1ll << 31)) { fixed /= 2; ++*shift; }
  *q = (int32_t)fixed;
}

int main() {
  const double doubles[] = {DOUBLES};
  for (double d : doubles) { ap_fixed<32, 1> f = d; printf("load %lld\n", (long long)f.range(31, 0).to_int64()); }
  const long long pairs[][2] = {PAIRS};
  for (auto& p : pairs) {
    ap_int<32> acc = p[0];
    ap_fixed<32, 1> f; f.range(31, 0) = p[1];
    ap_int<32> t = acc * f;
    ap_fixed<32, 32> fl = acc * f;
    ap_fixed<32, 32, AP_RND> r = acc * f;
    printf("narrow %d %d %d\n", t.to_int(), ap_int<32>(fl).to_int(), ap_int<32>(r).to_int());
  }
  const long long stores[] = {STORES};
  for (long long s : stores) {
    ap_int<40> y = s; ap_uint<8> u = y; ap_int<8> i = y;
    printf("store %d %d\n", u.to_int(), i.to_int());
  }
  const long long tfl[][3] = {TFL};
  for (auto& t : tfl) {
    int32_t x = (int32_t)t[0], q = (int32_t)t[1]; int shift = (int)t[2];
    printf("tfl %d %d %d", srdhm(x, q), mbqm_double(x, q, shift), shift <= 0 ? rdbpot(x, -shift) : 0);
    printf(" %d\n", shift <= 0 ? mbqm_single(x, q, shift) : 0);
  }
  const double multipliers[] = {MULTIPLIERS};
  for (double m : multipliers) { int32_t q; int s; quantize_multiplier(m, &q, &s); printf("qm %d %d\n", q, s); }
  return 0;
}
"""


def _join(rows) -> str:
    return ", ".join("{" + ", ".join(str(v) for v in row) + "}" if isinstance(row, tuple) else repr(row) for row in rows)


@pytest.fixture(scope="module")
def cpp_results(tmp_path_factory) -> dict:
    if shutil.which("g++") is None or AP_TYPES is None:
        pytest.skip("needs g++ and the ap_types headers of the hls4ml package (pip install hls4ml)")
    folder = tmp_path_factory.mktemp("dialects")
    source = (CPP.replace("{DOUBLES}", "{" + ", ".join(repr(d) for d in DOUBLES) + "}")
              .replace("{PAIRS}", "{" + _join([(a, f) for a, f in PAIRS]).replace("-2147483648", "-2147483647 - 1") + "}")
              .replace("{STORES}", "{" + ", ".join(map(str, STORES)) + "}")
              .replace("{TFL}", "{" + _join(TFL).replace("-2147483648", "-2147483647 - 1") + "}")
              .replace("{MULTIPLIERS}", "{" + ", ".join(repr(m) for m in MULTIPLIERS) + "}"))
    (folder / "d.cpp").write_text(source)
    subprocess.run(["g++", "-O0", "-std=c++14", f"-I{AP_TYPES}", "-o", str(folder / "d"), str(folder / "d.cpp")],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(folder / "d")], check=True, capture_output=True, text=True).stdout.splitlines()
    results: dict = {}
    for line in out:
        key, *values = line.split()
        results.setdefault(key, []).append([int(v) for v in values])
    return results


# ------------------------------------------------------------------------------ apfixed


@needs_cpp
def test_apfixed_load_floors_and_wraps_like_ap_fixed(cpp_results):
    got = [apfixed_raw(d) for d in DOUBLES]
    # the C++ prints the raw bits as unsigned 32-bit; compare as two's complement
    expected = [v[0] - (1 << 32) if v[0] >= (1 << 31) else v[0] for v in cpp_results["load"]]
    assert got == expected
    assert apfixed_raw(1.0) == INT32_MIN  # 1.0 wraps to -1.0


@needs_cpp
def test_narrowing_modes_match_ap_types(cpp_results):
    acc = torch.tensor([a for a, _ in PAIRS])
    factor = torch.tensor([f for _, f in PAIRS])
    product = acc * factor
    got = torch.stack([narrow(product, "trunc"), narrow(product, "floor"), narrow(product, "round")], 1)
    assert got.tolist() == cpp_results["narrow"]


def test_narrowing_modes_closed_form():
    for a, f in PAIRS[:300]:
        exact = Fraction(a * f, 1 << 31)
        trunc = math.floor(exact) if exact >= 0 else math.ceil(exact)
        expected = [trunc, math.floor(exact), math.floor(exact + Fraction(1, 2))]
        product = torch.tensor([a * f])
        assert [int(narrow(product, m)) for m in ("trunc", "floor", "round")] == expected


@needs_cpp
def test_store_saturates_or_wraps_like_ap_uint8(cpp_results):
    values = torch.tensor(STORES)
    wrapped = torch.stack([store(values, 8, False, False), store(values, 8, True, False)], 1)
    assert wrapped.tolist() == cpp_results["store"]
    assert int(store(torch.tensor(300), 8, False, False)) == 44
    assert store(values, 8, False, True).tolist() == [max(0, min(255, v)) for v in STORES]


def test_check_factor_rejects_what_ap_fixed_cannot_hold():
    assert check_factor(0.5, 8) == 1 << 30
    assert check_factor(1 - 2.0**-31, 8) == (1 << 31) - 1
    assert check_factor(2.0**-24, 8) == 128  # exactly 8 significant bits: allowed
    with pytest.raises(ValueError, match=r"factor=1.0 must be < 1: ap_fixed<32,1> holds \[-1, 1\) and would wrap it to -1.0"):
        check_factor(1.0, 8)
    with pytest.raises(ValueError, match=r"must be < 1"):
        check_factor(1.7, 8)
    with pytest.raises(ValueError, match=r"keeps only 7 significant bits .* fewer than min_factor_bits=8"):
        check_factor(2.0**-25, 8)
    for bad in (0.0, -0.25, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"must be a finite number > 0"):
            check_factor(bad, 8)


def test_dialect_settings_are_validated():
    with pytest.raises(ValueError, match=r"narrowing='nearest' must be one of \('trunc', 'floor', 'round'\)"):
        ApFixed(narrowing="nearest")
    with pytest.raises(ValueError, match=r"store='clip' must be one of"):
        ApFixed(store="clip")
    with pytest.raises(ValueError, match=r"acc_bits=40 must be an int in \[16, 32\]"):
        ApFixed(acc_bits=40)
    with pytest.raises(ValueError, match=r"rounding='triple' must be one of"):
        TFLite(rounding="triple")
    with pytest.raises(ValueError, match=r"dialect='cmsis' must be one of"):
        make_dialect("cmsis")
    assert make_dialect("apfixed", narrowing="floor") == ApFixed(narrowing="floor")


def test_wrap_signed_is_twos_complement():
    values = torch.tensor([INT32_MAX + 1, INT32_MIN - 1, 5, -5, (1 << 33) + 7])
    assert wrap_signed(values, 32).tolist() == [INT32_MIN, INT32_MAX, 5, -5, 7]


# ------------------------------------------------------------------------------ tflite


@needs_cpp
def test_tflite_arithmetic_matches_the_reference_cpp(cpp_results):
    x = torch.tensor([t[0] for t in TFL])
    q = torch.tensor([t[1] for t in TFL])
    shift = torch.tensor([t[2] for t in TFL])
    non_positive = shift <= 0
    zero = torch.zeros_like(x)
    got = torch.stack([
        saturating_rounding_doubling_high_mul(x, q),
        multiply_by_quantized_multiplier(x, q, shift, "double"),
        torch.where(non_positive, rounding_divide_by_pot(x, (-shift).clamp(min=0)), zero),
        torch.where(non_positive, multiply_by_quantized_multiplier(x, q, shift.clamp(max=0), "single"), zero),
    ], 1)
    assert got.tolist() == cpp_results["tfl"]


def test_tflite_rounding_closed_forms():
    """SRDHM rounds x*q/2**31 half up; RDBPOT rounds half away from zero; single rounding is one half-up."""
    for x, q, shift in TFL[3:200]:
        exact = Fraction(x * q, 1 << 31)
        assert int(saturating_rounding_doubling_high_mul(torch.tensor(x), torch.tensor(q))) == math.floor(exact + Fraction(1, 2))
        e = -shift
        value = Fraction(x, 1 << e)
        away = math.floor(abs(value) + Fraction(1, 2)) * (1 if value >= 0 else -1)
        assert int(rounding_divide_by_pot(torch.tensor(x), torch.tensor(e))) == away
        single = math.floor(Fraction(x * q, 1 << (31 - shift)) + Fraction(1, 2))
        assert int(multiply_by_quantized_multiplier(torch.tensor(x), torch.tensor(q), torch.tensor(shift), "single")) == single


@needs_cpp
def test_quantize_multiplier_matches_the_reference_cpp(cpp_results):
    got = [list(quantize_multiplier(m)) for m in MULTIPLIERS]
    assert got == cpp_results["qm"]
    for m, (q, s) in zip(MULTIPLIERS, got):
        assert 1 << 30 <= q < 1 << 31
        assert abs(q * 2.0 ** (s - 31) - m) <= m * 2.0**-30


def test_quantize_multiplier_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"multiplier=0.0 must be a finite number > 0"):
        quantize_multiplier(0.0)
    with pytest.raises(ValueError, match=r"shift 31 exceeds 30"):
        quantize_multiplier(2.0**30)
    with pytest.raises(ValueError, match=r"below 2\*\*-32"):
        quantize_multiplier(2.0**-40)
