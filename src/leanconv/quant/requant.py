"""Per-layer requantization: the accumulator of one integer layer to its stored 8-bit output.

:class:`ApFixedRequant` and :class:`TFLiteRequant` hold one layer's integer constants
(factors or multipliers and shifts, biases) and apply the dialect's exact arithmetic from
:mod:`leanconv.quant.dialects`; :func:`make_requant` derives those constants from float
scales. Both count hazards (accumulator overflow, output saturation) into a ``stats`` dict
when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch
from torch import Tensor

from leanconv.quant.checks import check_bool, check_fields, check_int, int_tensor
from leanconv.quant.dialects import (
    INT32_MAX,
    ApFixed,
    Dialect,
    TFLite,
    check_factor,
    int_range,
    multiply_by_quantized_multiplier,
    narrow,
    quantize_multiplier,
    store,
    wrap_signed,
)
from leanconv.quant.qparams import QParams

Stats = Dict[str, int]


def _per_channel(t: Tensor, like: Tensor) -> Tensor:
    """Reshape an ``(O,)`` tensor to broadcast over channel dim 1 of ``like``."""
    return t.reshape((1, -1) + (1,) * (like.dim() - 2))


def _count(stats: Optional[Stats], key: str, value: int) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + int(value)


def _acc_stats(acc: Tensor, bits: int, stats: Optional[Stats]) -> None:
    if stats is None:
        return
    low, high = int_range(bits, True)
    _count(stats, "acc_overflow", ((acc < low) | (acc > high)).sum())
    stats["acc_max_abs"] = max(stats.get("acc_max_abs", 0), int(acc.abs().max()) if acc.numel() else 0)
    _count(stats, "outputs", acc.numel())


@dataclass
class ApFixedRequant:
    """``store(relu(bias + narrow(acc * F / 2**31)))`` with ``F`` an ``ap_fixed<32,1>`` raw int32.

    ``factor``: ``(O,)`` raw int32 values (per channel, or one repeated when ``per_channel`` is
    False); ``bias``: ``(O,)`` ints in output units; ``out``: the stored activation's QParams.
    """

    settings: ApFixed
    factor: Tensor
    bias: Tensor
    relu: bool
    out: QParams
    per_channel: bool = True
    bias_clipped: int = 0

    def __post_init__(self) -> None:
        self.factor = int_tensor(self.factor, "factor").reshape(-1)
        self.bias = int_tensor(self.bias, "bias").reshape(-1)
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless every constant is an integer of its range and every flag a bool."""
        _check_common(self, ApFixed)
        if self.factor.shape != self.bias.shape:
            raise ValueError(f"factor has {self.factor.numel()} channels but bias has {self.bias.numel()}")
        if bool(((self.factor <= 0) | (self.factor > (1 << 31) - 1)).any()):
            raise ValueError("factor raw values must be in [1, 2**31 - 1] (ap_fixed<32,1> in (0, 1))")
        low, high = int_range(self.settings.bias_bits, True)
        if bool(((self.bias < low) | (self.bias > high)).any()):
            raise ValueError(f"bias values must fit ap_int<{self.settings.bias_bits}>: [{low}, {high}]")
        if self.out.zero_point != 0:
            raise ValueError(f"out.zero_point={self.out.zero_point} must be 0 in the apfixed dialect")

    @property
    def channels(self) -> int:
        return self.factor.numel()

    def __call__(self, acc: Tensor, stats: Optional[Stats] = None) -> Tensor:
        settings = self.settings
        _acc_stats(acc, settings.acc_bits, stats)
        acc = wrap_signed(acc, settings.acc_bits)
        y = narrow(acc * _per_channel(self.factor, acc), settings.narrowing) + _per_channel(self.bias, acc)
        if self.relu:
            y = y.clamp(min=0)
        low, high = self.out.range
        _count(stats, "saturated", ((y < low) | (y > high)).sum())
        return store(y, self.out.bits, self.out.signed, settings.store == "saturate")

    def to_dict(self) -> dict:
        return {"factor": self.factor, "bias": self.bias, "relu": self.relu, "out": self.out.to_dict(),
                "per_channel": self.per_channel, "bias_clipped": self.bias_clipped}


@dataclass
class TFLiteRequant:
    """``clamp(MBQM(acc + bias, q, shift) + zp_out, act_min, act_max)``, TFLite's int8 kernels."""

    settings: TFLite
    multiplier: Tensor
    shift: Tensor
    bias: Tensor
    relu: bool
    out: QParams
    per_channel: bool = True
    bias_clipped: int = 0

    def __post_init__(self) -> None:
        self.multiplier = int_tensor(self.multiplier, "multiplier").reshape(-1)
        self.shift = int_tensor(self.shift, "shift").reshape(-1)
        self.bias = int_tensor(self.bias, "bias").reshape(-1)
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless every constant is an integer of its range and every flag a bool."""
        _check_common(self, TFLite)
        if not self.multiplier.shape == self.shift.shape == self.bias.shape:
            raise ValueError("multiplier, shift and bias must have one value per output channel")
        if bool(((self.multiplier < 1 << 30) | (self.multiplier > INT32_MAX)).any()):
            raise ValueError("multiplier values must be in [2**30, 2**31 - 1] (QuantizeMultiplier's range)")
        if bool(((self.shift < -31) | (self.shift > 30)).any()):
            raise ValueError("shift values must be in [-31, 30]")
        low, high = int_range(32, True)
        if bool(((self.bias < low) | (self.bias > high)).any()):
            raise ValueError(f"bias values must fit int32: [{low}, {high}]")

    @property
    def channels(self) -> int:
        return self.multiplier.numel()

    @property
    def activation_range(self):
        low, high = self.out.range
        return (max(low, self.out.zero_point) if self.relu else low), high

    def __call__(self, acc: Tensor, stats: Optional[Stats] = None) -> Tensor:
        acc = acc + _per_channel(self.bias, acc)
        _acc_stats(acc, 32, stats)
        acc = wrap_signed(acc, 32)
        y = multiply_by_quantized_multiplier(
            acc, _per_channel(self.multiplier, acc), _per_channel(self.shift, acc), self.settings.rounding
        ) + self.out.zero_point
        act_min, act_max = self.activation_range
        below = torch.zeros_like(y, dtype=torch.bool) if self.relu else y < act_min  # ReLU's clamp is no hazard
        _count(stats, "saturated", (below | (y > act_max)).sum())
        return y.clamp(act_min, act_max)

    def to_dict(self) -> dict:
        return {"multiplier": self.multiplier, "shift": self.shift, "bias": self.bias, "relu": self.relu,
                "out": self.out.to_dict(), "per_channel": self.per_channel, "bias_clipped": self.bias_clipped}


Requant = Union[ApFixedRequant, TFLiteRequant]


def _check_common(requant: Requant, settings_type: type) -> None:
    """The fields both requantizations share: settings, flags, clipped count, output QParams."""
    if not isinstance(requant.settings, settings_type):
        raise ValueError(f"settings={requant.settings!r} must be a {settings_type.__name__}")
    requant.settings.check()
    check_bool(requant.relu, "relu")
    check_bool(requant.per_channel, "per_channel")
    check_int(requant.bias_clipped, "bias_clipped", 0)
    if not isinstance(requant.out, QParams):
        raise ValueError(f"out={requant.out!r} must be a QParams")
    requant.out.check()


def make_requant(
    dialect: Dialect,
    multiplier: Tensor,
    bias: Optional[Tensor],
    acc_scale: Tensor,
    out: QParams,
    relu: bool,
    name: str,
    per_channel: bool = True,
) -> Requant:
    """One layer's integer constants from its float scales.

    ``multiplier[o]`` is the real factor ``acc_scale[o] / out.scale`` from accumulator units to
    output units; ``bias`` the float bias (None: zero). apfixed: factors loaded and checked
    (:func:`check_factor`), bias ``round(b / s_out)`` clipped to ``bias_bits``. tflite: frexp
    multipliers, bias ``round(b / acc_scale)`` clipped to int32.
    """
    multiplier = multiplier.to(torch.float64).reshape(-1)
    float_bias = torch.zeros_like(multiplier) if bias is None else bias.detach().to(torch.float64).reshape(-1)
    if isinstance(dialect, ApFixed):
        factor = [check_factor(float(m), dialect.min_factor_bits, f"{name}: factor of output channel {o}")
                  for o, m in enumerate(multiplier)]
        low, high = int_range(dialect.bias_bits, True)
        wanted = torch.round(float_bias / out.scale)
        clipped = int(((wanted < low) | (wanted > high)).sum())
        return ApFixedRequant(dialect, torch.tensor(factor), wanted.clamp(low, high).to(torch.int64), relu, out,
                              per_channel, clipped)
    pairs = []
    for o, m in enumerate(multiplier):
        try:
            pairs.append(quantize_multiplier(float(m)))
        except ValueError as error:
            raise ValueError(f"{name}: output channel {o}: {error}") from None
    low, high = int_range(32, True)
    wanted = torch.round(float_bias / acc_scale.to(torch.float64).reshape(-1))
    clipped = int(((wanted < low) | (wanted > high)).sum())
    return TFLiteRequant(dialect, torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]),
                         wanted.clamp(low, high).to(torch.int64), relu, out, per_channel, clipped)


def requant_from_dict(dialect: Dialect, data: dict, where: str = "requant") -> Requant:
    """Inverse of ``to_dict`` for ``dialect``; a malformed dict raises ``ValueError`` naming the field."""
    constants = ["factor"] if isinstance(dialect, ApFixed) else ["multiplier", "shift"]
    data = dict(check_fields(data, where, constants + ["bias", "relu", "out"], ["per_channel", "bias_clipped"]))
    data["out"] = QParams.from_dict(data["out"], f"{where}.out")
    cls = ApFixedRequant if isinstance(dialect, ApFixed) else TFLiteRequant
    try:
        return cls(dialect, **data)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


__all__ = ["ApFixedRequant", "Requant", "TFLiteRequant", "make_requant", "requant_from_dict"]
