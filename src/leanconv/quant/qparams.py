"""Scales and zero points: how float activations and weights map to 8-bit integers.

An activation tensor has one :class:`QParams` (per-tensor scale and zero point): ``q =
clamp(round(x / scale) + zero_point, qmin, qmax)`` and ``x ~ scale * (q - zero_point)``.
Weights are symmetric per output channel in ``[-127, 127]`` (:func:`quantize_weight`), as
both dialects require. Which activation scheme a tensor gets is the dialect's rule
(:func:`activation_qparams`).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch import Tensor

from leanconv.quant.checks import check_bool, check_fields, check_int, check_real
from leanconv.quant.dialects import ApFixed, Dialect, int_range


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization of an activation: ``x ~ scale * (q - zero_point)``."""

    scale: float
    zero_point: int = 0
    bits: int = 8
    signed: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless scale is a real > 0, bits an int in [2, 32], signed a bool and
        zero_point an int in the type's range (plain values: they reach generated code)."""
        if check_real(self.scale, "scale") <= 0:
            raise ValueError(f"scale={self.scale!r} must be a finite number > 0")
        check_int(self.bits, "bits", 2, 32)
        check_bool(self.signed, "signed")
        low, high = self.range
        zero_point = self.zero_point
        if isinstance(zero_point, bool) or not isinstance(zero_point, numbers.Integral) or not low <= zero_point <= high:
            raise ValueError(f"zero_point={zero_point!r} must lie in the integer range [{low}, {high}] (an int)")

    @classmethod
    def from_dict(cls, data: dict, where: str = "qparams") -> "QParams":
        """Inverse of :meth:`to_dict`; a malformed dict raises ``ValueError`` naming ``where``."""
        check_fields(data, where, ["scale", "zero_point", "bits", "signed"])
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    @property
    def range(self) -> Tuple[int, int]:
        """``(qmin, qmax)``."""
        return int_range(self.bits, self.signed)

    @property
    def ctype(self) -> str:
        """The Xilinx type that holds it: ``ap_uint<8>`` or ``ap_int<8>``."""
        return f"{'ap_int' if self.signed else 'ap_uint'}<{self.bits}>"

    def quantize(self, x: Tensor) -> Tensor:
        """Float tensor to int64 codes (round half to even, then clamp)."""
        low, high = self.range
        q = torch.round(x.double() / self.scale) + self.zero_point
        return q.clamp(low, high).to(torch.int64)

    def dequantize(self, q: Tensor) -> Tensor:
        """Int codes to float32 values."""
        return ((q.to(torch.float64) - self.zero_point) * self.scale).to(torch.float32)

    def to_dict(self) -> dict:
        return asdict(self)


def activation_qparams(dialect: Dialect, low: float, high: float) -> QParams:
    """The dialect's activation quantization for an observed range ``[low, high]``.

    apfixed: zero point 0; uint8 ``scale = high / 255`` when ``low >= 0`` (after a ReLU), else
    symmetric int8 ``scale = max(|low|, |high|) / 127``. tflite: asymmetric int8 over
    ``[min(low, 0), max(high, 0)]``, ``scale = range / 255``, zero point so 0.0 is exact.
    """
    low, high = float(low), float(high)
    if isinstance(dialect, ApFixed):
        if low >= 0:
            return QParams(_positive(high / 255.0), 0, 8, False)
        return QParams(_positive(max(-low, high) / 127.0), 0, 8, True)
    low, high = min(low, 0.0), max(high, 0.0)
    scale = _positive((high - low) / 255.0)
    zero_point = int(max(-128, min(127, round(-128 - low / scale))))
    return QParams(scale, zero_point, 8, True)


def quantize_weight(weight: Tensor, per_channel: bool = True) -> Tuple[Tensor, Tensor]:
    """Symmetric int8 weights: ``(w_q int64 in [-127, 127], scale float64 (O,))``.

    ``scale[o] = max|W[o]| / 127`` per output channel (row ``o`` of an ``(O, ...)`` weight), or
    one scale for the whole tensor; an all-zero channel gets scale 1.
    """
    w = weight.detach().to(torch.float64)
    flat = w.reshape(w.shape[0], -1).abs()
    peak = flat.amax(dim=1) if per_channel else flat.amax().expand(w.shape[0])
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    w_q = torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127).to(torch.int64)
    return w_q, scale


def _positive(scale: float) -> float:
    """A tensor that never left zero still needs a valid scale."""
    return scale if scale > 0 else 1.0 / 255.0


__all__ = ["QParams", "activation_qparams", "quantize_weight"]
