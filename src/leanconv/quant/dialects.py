"""Requantization dialects: how an integer accumulator becomes the next layer's 8-bit activation.

Two dialects, chosen explicitly, each a frozen settings object plus pure functions on int64
tensors (exact: no float rounding anywhere):

* :class:`ApFixed` — the HLS style of seed 004. The factor is an ``ap_fixed<32,1>``: a raw
  int32 ``F`` worth ``F / 2**31`` in ``[-1, 1)``. Loading a double floors it
  (:func:`apfixed_raw`); a value >= 1 wraps silently in C++ (``1.0`` becomes ``-1.0``), so
  :func:`check_factor` rejects it, and also a factor whose raw value keeps fewer than
  ``min_factor_bits`` significant bits. ``acc * factor`` is the exact product ``acc * F``
  scaled by ``2**-31``; it is narrowed to an integer toward zero (assigning to ``ap_int``),
  by floor (assigning to a default ``ap_fixed<W,W>``, mode ``AP_TRN``) or by rounding half
  up (``AP_RND``). The bias is added after rescaling, in output units (``ap_int<16>``), then
  ReLU, then the store to ``ap_uint<8>``/``ap_int<8>``: saturating (explicit clamp) or
  wrapping (a plain assignment keeps the low bits: 300 -> 44).
* :class:`TFLite` — the TFLite int8 spec: int32 bias at the accumulator scale, the
  multiplier from ``frexp`` (:func:`quantize_multiplier`), and gemmlowp's double rounding
  (:func:`saturating_rounding_doubling_high_mul` then :func:`rounding_divide_by_pot`) or
  TFLite's single rounding, then the output zero point and the activation clamp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar, Tuple, Union

import torch
from torch import Tensor

from leanconv._validate import check_choice
from leanconv.quant.checks import check_fields, check_int

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
NARROWINGS = ("trunc", "floor", "round")
STORES = ("saturate", "wrap")
ROUNDINGS = ("double", "single")


# ---------------------------------------------------------------------------- integer helpers


def wrap_signed(x: Tensor, bits: int) -> Tensor:
    """Two's complement wrap to ``bits`` (what assigning to ``ap_int<bits>`` does)."""
    half = 1 << (bits - 1)
    return torch.remainder(x + half, 1 << bits) - half


def wrap_unsigned(x: Tensor, bits: int) -> Tensor:
    """Keep the low ``bits`` bits as an unsigned value (assigning to ``ap_uint<bits>``)."""
    return torch.remainder(x, 1 << bits)


def int_range(bits: int, signed: bool) -> Tuple[int, int]:
    """``(min, max)`` of a ``bits``-wide signed or unsigned integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def store(x: Tensor, bits: int, signed: bool, saturate: bool) -> Tensor:
    """Store into an integer of ``bits`` bits: clamp when ``saturate``, else wrap."""
    if saturate:
        low, high = int_range(bits, signed)
        return x.clamp(low, high)
    return wrap_signed(x, bits) if signed else wrap_unsigned(x, bits)


# ---------------------------------------------------------------------------- apfixed


def apfixed_raw(value: float) -> int:
    """The raw int32 that ``ap_fixed<32,1> f = value;`` holds: ``floor(value * 2**31)``, wrapped.

    Scaling a double by a power of two is exact, so the floor is exact too. Values outside
    ``[-1, 1)`` wrap like the C++ type does (1.0 -> raw ``-2**31``, i.e. -1.0).
    """
    raw = math.floor(float(value) * 2.0**31)
    return ((raw + (1 << 31)) % (1 << 32)) - (1 << 31)


def check_factor(value: float, min_bits: int, what: str = "factor") -> int:
    """Validate a requantization factor for ``ap_fixed<32,1>`` and return its raw int32.

    Rejected: non-finite values, ``value <= 0`` (a factor ``s_in * s_w / s_out`` is
    positive), ``value >= 1`` (it would wrap to a negative number) and values whose raw
    int keeps fewer than ``min_bits`` significant bits (relative error up to ``2**(1-bits)``).
    """
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}={value!r} must be a finite number > 0 (s_in * s_w / s_out)")
    if value >= 1.0:
        raise ValueError(
            f"{what}={value!r} must be < 1: ap_fixed<32,1> holds [-1, 1) and would wrap it to "
            f"{apfixed_raw(value) / 2.0**31!r}; lower the input or weight scale or raise the output scale"
        )
    raw = apfixed_raw(value)
    if raw.bit_length() < min_bits:
        raise ValueError(
            f"{what}={value!r} keeps only {raw.bit_length()} significant bits in ap_fixed<32,1> "
            f"(raw {raw}), fewer than min_factor_bits={min_bits}: its relative error could reach "
            f"{2.0 ** (1 - max(raw.bit_length(), 1)):.1%}"
        )
    return raw


def narrow(product: Tensor, mode: str) -> Tensor:
    """``product / 2**31`` to an integer: ``'trunc'`` toward zero, ``'floor'``, or ``'round'`` half up.

    ``product`` is the exact int64 ``acc * F``; the modes are what assigning ``acc * factor``
    to ``ap_int<W>``, to ``ap_fixed<W,W>`` and to ``ap_fixed<W,W,AP_RND>`` does.
    """
    check_choice(mode, "narrowing", NARROWINGS)
    if mode == "trunc":
        return torch.div(product, 1 << 31, rounding_mode="trunc")
    if mode == "floor":
        return torch.div(product, 1 << 31, rounding_mode="floor")
    return torch.div(product + (1 << 30), 1 << 31, rounding_mode="floor")


@dataclass(frozen=True)
class ApFixed:
    """The seed's HLS dialect: ``ap_fixed<32,1>`` factor, int16 bias after rescaling, uint8 activations.

    ``narrowing``: ``'round'`` (``AP_RND``, half up; the default, the most accurate), ``'trunc'``
    (toward zero, as assigning to ``ap_int``: what a plain cast does) or ``'floor'`` (a default
    ``ap_fixed``). ``store``: ``'saturate'`` (explicit clamp)
    or ``'wrap'`` (plain assignment). ``acc_bits``: accumulator width (``ap_int<32>``);
    ``bias_bits``: bias width (``ap_int<16>``); ``min_factor_bits``: fewest significant bits a
    factor may keep. Activations have zero point 0: uint8 after a ReLU, int8 otherwise.
    """

    narrowing: str = "round"
    store: str = "saturate"
    acc_bits: int = 32
    bias_bits: int = 16
    min_factor_bits: int = 8
    name: ClassVar[str] = "apfixed"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless every setting is one of its choices or an int in its range."""
        check_choice(self.narrowing, "narrowing", NARROWINGS)
        check_choice(self.store, "store", STORES)
        check_int(self.acc_bits, "acc_bits", 16, 32)
        check_int(self.bias_bits, "bias_bits", 8, 32)
        check_int(self.min_factor_bits, "min_factor_bits", 1, 31)

    def to_dict(self) -> dict:
        return {"dialect": self.name, "narrowing": self.narrowing, "store": self.store,
                "acc_bits": self.acc_bits, "bias_bits": self.bias_bits, "min_factor_bits": self.min_factor_bits}


# ---------------------------------------------------------------------------- tflite


def quantize_multiplier(value: float) -> Tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``value = q * 2**(shift - 31)`` with ``q`` in ``[2**30, 2**31)``.

    ``frexp`` gives ``value = f * 2**shift`` with ``f`` in ``[0.5, 1)``; ``q = round(f * 2**31)``
    (half away from zero, as ``std::round``); ``q == 2**31`` becomes ``2**30`` with ``shift + 1``.
    Rejects ``value <= 0``, a ``shift`` above 30 and one below -31 (all bits lost).
    """
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"multiplier={value!r} must be a finite number > 0 (s_in * s_w / s_out)")
    fraction, shift = math.frexp(value)
    q = math.floor(fraction * 2.0**31 + 0.5)  # exact: fraction * 2**31 < 2**31 has <= 53 bits
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift > 30:
        raise ValueError(f"multiplier={value!r} must be < 2**30 (its shift {shift} exceeds 30)")
    if shift < -31:
        raise ValueError(f"multiplier={value!r} is below 2**-32: TFLite would round it to 0 (shift {shift} < -31)")
    return q, shift


def saturating_rounding_doubling_high_mul(a: Tensor, b: Tensor) -> Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int32 values held in int64 tensors.

    ``(a*b + nudge) / 2**31`` with C's truncating division, nudge ``2**30`` (or ``1 - 2**30``
    for a negative product); ``a == b == INT32_MIN`` saturates to ``INT32_MAX``.
    """
    a, b = torch.broadcast_tensors(a, b)
    product = a * b
    nudge = torch.where(product >= 0, torch.full_like(product, 1 << 30), torch.full_like(product, 1 - (1 << 30)))
    high = torch.div(product + nudge, 1 << 31, rounding_mode="trunc")
    overflow = (a == b) & (a == INT32_MIN)
    return torch.where(overflow, torch.full_like(high, INT32_MAX), high)


def rounding_divide_by_pot(x: Tensor, exponent: Tensor) -> Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero."""
    x, exponent = torch.broadcast_tensors(x, exponent)
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(x.dtype)
    return (x >> exponent) + (remainder > threshold).to(x.dtype)


def multiply_by_quantized_multiplier(x: Tensor, multiplier: Tensor, shift: Tensor, rounding: str = "double") -> Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier(x, q, shift)`` with double or single rounding.

    Double: ``RoundingDivideByPOT(SRDHM(x * 2**max(shift, 0), q), max(-shift, 0))`` (the left
    shift wraps in int32 as the C++ does). Single: ``(x * q + 2**(30 - shift)) >> (31 - shift)``,
    cast to int32.
    """
    check_choice(rounding, "rounding", ROUNDINGS)
    x, multiplier, shift = torch.broadcast_tensors(x, multiplier, shift)
    if rounding == "single":
        total = 31 - shift
        return wrap_signed((x * multiplier + (torch.ones_like(total) << (total - 1))) >> total, 32)
    left = shift.clamp(min=0)
    right = (-shift).clamp(min=0)
    shifted = wrap_signed(x * (torch.ones_like(left) << left), 32)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


@dataclass(frozen=True)
class TFLite:
    """TFLite int8: asymmetric int8 activations with zero points, int32 bias, frexp multipliers.

    ``rounding``: ``'double'`` (gemmlowp, the reference kernels' default) or ``'single'``
    (``TFLITE_SINGLE_ROUNDING``). Weights are symmetric per channel in ``[-127, 127]``.
    """

    rounding: str = "double"
    acc_bits: ClassVar[int] = 32
    name: ClassVar[str] = "tflite"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless ``rounding`` is one of its choices."""
        check_choice(self.rounding, "rounding", ROUNDINGS)

    def to_dict(self) -> dict:
        return {"dialect": self.name, "rounding": self.rounding}


Dialect = Union[ApFixed, TFLite]
DIALECTS = ("apfixed", "tflite")


def make_dialect(dialect: Union[str, Dialect], **settings) -> Dialect:
    """An :class:`ApFixed` or :class:`TFLite` from its name and settings (or pass one through)."""
    if isinstance(dialect, (ApFixed, TFLite)):
        if settings:
            raise ValueError(f"settings {sorted(settings)} only apply when dialect is given by name")
        return dialect
    check_choice(dialect, "dialect", DIALECTS)
    cls = ApFixed if dialect == "apfixed" else TFLite
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(str(key) for key in settings if key not in allowed)
    if unknown:
        raise ValueError(f"settings {unknown} are not settings of the {dialect} dialect; allowed: {allowed}")
    return cls(**settings)


def dialect_from_dict(data: dict) -> Dialect:
    """Inverse of ``to_dict``; a malformed dict raises ``ValueError`` naming the field."""
    data = dict(check_fields(data, "dialect", ["dialect"], ["narrowing", "store", "acc_bits", "bias_bits",
                                                              "min_factor_bits", "rounding"]))
    return make_dialect(data.pop("dialect"), **data)


__all__ = [
    "ApFixed",
    "DIALECTS",
    "Dialect",
    "INT32_MAX",
    "INT32_MIN",
    "NARROWINGS",
    "ROUNDINGS",
    "STORES",
    "TFLite",
    "apfixed_raw",
    "check_factor",
    "dialect_from_dict",
    "int_range",
    "make_dialect",
    "multiply_by_quantized_multiplier",
    "narrow",
    "quantize_multiplier",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
    "store",
    "wrap_signed",
    "wrap_unsigned",
]
