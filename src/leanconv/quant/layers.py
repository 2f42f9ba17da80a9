"""Integer layers: exact int8 convs and linears with a dialect's requantization.

:class:`IntConv2d` covers every conv leanconv's efficient kinds are made of: pointwise 1x1,
depthwise (``groups = C``, any depth multiplier), dense and grouped ``kh x kw``, asymmetric
``kh x 1`` / ``1 x kw``, with any stride, dilation and zero padding (symmetric or not).
:class:`IntLinear` is a linear layer, optionally on the global sum of a feature map (global
average pooling folded into its factor). The accumulator is exact: the products of integers
are summed in float64 on the CPU (every partial sum is an integer far below ``2**53``) and
converted to int64; the requantization is the dialect's integer arithmetic.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from leanconv._validate import check_choice, check_positive_int, check_positive_pair, pair
from leanconv.quant.checks import check_fields, check_int, check_ints, check_name
from leanconv.quant.dialects import ApFixed, int_range
from leanconv.quant.qparams import QParams
from leanconv.quant.requant import ApFixedRequant, Requant, Stats, TFLiteRequant, requant_from_dict
from leanconv.quant.dialects import check_factor

Pads = Tuple[int, int, int, int]  # (top, bottom, left, right)


def normalize_pads(padding: Union[int, Sequence[int]]) -> Pads:
    """``p``, ``(ph, pw)`` or ``(top, bottom, left, right)`` to ``(top, bottom, left, right)``."""
    if isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 4:
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in padding):
            return tuple(int(v) for v in padding)  # type: ignore[return-value]
        raise ValueError(f"padding={padding!r} must hold ints >= 0 (top, bottom, left, right)")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding={padding!r} must be >= 0")
    return (ph, ph, pw, pw)


def _exact_int(acc: Tensor) -> Tensor:
    """float64 accumulator (integer-valued by construction) to int64, checking it is integral."""
    result = acc.round()
    if not torch.equal(result, acc):  # pragma: no cover - float64 sums of small ints are exact
        raise RuntimeError("accumulator is not integral: float64 exactness was lost")
    return result.to(torch.int64)


def _check_codes(x: Tensor, q: QParams, channels: int, layer: str, dims: int) -> None:
    if x.dim() != dims:
        raise ValueError(f"{layer}: input must be {dims}-D with C={channels}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{layer}: input has {x.shape[1]} channels, expected {channels} (shape {tuple(x.shape)})")
    if x.is_floating_point() or x.is_complex():
        raise ValueError(f"{layer}: input must hold integer codes, got dtype {x.dtype} (quantize it first)")
    low, high = q.range
    if x.numel() and (int(x.min()) < low or int(x.max()) > high):
        raise ValueError(f"{layer}: input codes span [{int(x.min())}, {int(x.max())}], outside {q.ctype} [{low}, {high}]")


def _int8_weight(value, dims: int, name: str, layout: str) -> Tensor:
    """``value`` as an int64 tensor of ``dims`` non-empty dimensions holding int8 values."""
    rule = f"{name}: weight must be a {dims}-D integer tensor {layout} with every dimension >= 1"
    try:
        weight = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{rule}, got {type(value).__name__}") from None
    if weight.dim() != dims or 0 in weight.shape or weight.is_floating_point() or weight.is_complex() \
            or weight.dtype == torch.bool:
        raise ValueError(f"{rule}, got {weight.dtype} {tuple(weight.shape)}")
    if int(weight.min()) < -128 or int(weight.max()) > 127:
        raise ValueError(f"{name}: weight values span [{int(weight.min())}, {int(weight.max())}], outside int8")
    return weight.to(torch.int64)


def _check_requant_and_input(layer) -> None:
    """A layer's requantization and input QParams: the right types, valid, one channel count."""
    if not isinstance(layer.requant, (ApFixedRequant, TFLiteRequant)):
        raise ValueError(f"{layer.name}: requant={type(layer.requant).__name__} must be an ApFixedRequant or "
                         "TFLiteRequant")
    layer.requant.check()
    if layer.requant.channels != layer.weight.shape[0]:
        raise ValueError(f"{layer.name}: requantization has {layer.requant.channels} channels, weight has "
                         f"{layer.weight.shape[0]} output channels")
    if not isinstance(layer.in_q, QParams):
        raise ValueError(f"{layer.name}: in_q={type(layer.in_q).__name__} must be a QParams")
    layer.in_q.check()


class IntConv2d:
    """An integer conv: int8 weights ``(O, C/groups, kh, kw)``, exact accumulator, requantization.

    ``in_q`` describes the input codes (zero padding pads the *real* zero, i.e. the zero point).
    ``padding`` is ``p``, ``(ph, pw)`` or ``(top, bottom, left, right)``.
    """

    def __init__(
        self,
        weight: Tensor,
        requant: Requant,
        in_q: QParams,
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Union[int, Sequence[int]] = 0,
        dilation: Union[int, Tuple[int, int]] = 1,
        groups: int = 1,
        name: str = "conv",
    ) -> None:
        self.name = check_name(name, "name")
        self.weight = _int8_weight(weight, 4, name, "(O, C/groups, kh, kw)")
        self.requant = requant
        self.in_q = in_q
        self.stride = check_positive_pair(stride, "stride")
        self.dilation = check_positive_pair(dilation, "dilation")
        self.padding: Pads = normalize_pads(padding)
        self.groups = check_positive_int(groups, "groups")
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless every field is a plain value in range.

        Run when built (so also when loaded from a file) and again before code generation:
        the name, shapes and integers are pasted into generated C++.
        """
        name = check_name(self.name, "name")
        self.weight = _int8_weight(self.weight, 4, name, "(O, C/groups, kh, kw)")
        check_ints(self.stride, f"{name}: stride", 2, 1)
        check_ints(self.dilation, f"{name}: dilation", 2, 1)
        check_ints(self.padding, f"{name}: padding", 4, 0)
        check_int(self.groups, f"{name}: groups", 1)
        if self.weight.shape[0] % self.groups:
            raise ValueError(f"{name}: out_channels={self.weight.shape[0]} must be divisible by groups={self.groups}")
        _check_requant_and_input(self)

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> Tuple[int, int]:
        return (self.weight.shape[2], self.weight.shape[3])

    @property
    def out_q(self) -> QParams:
        return self.requant.out

    @property
    def kind(self) -> str:
        """``pointwise``, ``depthwise``, ``grouped``, ``asymmetric`` (kx1 / 1xk) or ``dense``."""
        kh, kw = self.kernel_size
        if self.groups == self.in_channels and self.groups > 1:
            return "depthwise"
        if self.groups > 1:
            return "grouped"
        if (kh, kw) == (1, 1):
            return "pointwise"
        return "asymmetric" if 1 in (kh, kw) else "dense"

    def output_hw(self, h: int, w: int) -> Tuple[int, int]:
        """Output size for an ``h x w`` input."""
        top, bottom, left, right = self.padding
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.name}: input {h}x{w} is smaller than the dilated kernel")
        return out_h, out_w

    def check_input(self, x: Tensor) -> None:
        """Raise before any compute when ``x`` is not ``(N, C, H, W)`` codes in ``in_q``'s range."""
        _check_codes(x, self.in_q, self.in_channels, self.name, 4)
        self.output_hw(x.shape[2], x.shape[3])

    def accumulate(self, x: Tensor) -> Tensor:
        """Exact int64 accumulator ``sum w * (x - zero_point)`` (not wrapped), ``(N, O, H', W')``."""
        self.check_input(x)
        top, bottom, left, right = self.padding
        centred = F.pad((x.to(torch.int64) - self.in_q.zero_point).to(torch.float64), (left, right, top, bottom))
        acc = F.conv2d(centred, self.weight.to(torch.float64), None, self.stride, 0, self.dilation, self.groups)
        return _exact_int(acc)

    def __call__(self, x: Tensor, stats: Optional[Stats] = None) -> Tensor:
        """Integer output codes (int64 tensor)."""
        return self.requant(self.accumulate(x), stats)

    def worst_case_acc(self) -> int:
        """Largest ``|acc|`` any input in range can produce (for the accumulator-width hazard)."""
        low, high = self.in_q.range
        peak = max(abs(low - self.in_q.zero_point), abs(high - self.in_q.zero_point))
        per_channel = self.weight.abs().reshape(self.out_channels, -1).sum(1) * peak
        if hasattr(self.requant, "multiplier"):  # tflite: the bias is in the accumulator
            per_channel = per_channel + self.requant.bias.abs()
        return int(per_channel.max())

    @classmethod
    def apfixed(
        cls,
        weight: Tensor,
        bias: Sequence[int],
        factor: Union[float, Sequence[float]],
        settings: ApFixed = ApFixed(),
        relu: bool = True,
        in_signed: bool = False,
        out_signed: bool = False,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        name: str = "conv",
    ) -> "IntConv2d":
        """Build an apfixed layer from integer weights, integer biases and float factors.

        For hand-written kernels like the seed's: ``factor`` (one per output channel, or one for
        all) is loaded as ``ap_fixed<32,1>`` and checked (:func:`check_factor`); scales are 1.
        """
        weight = torch.as_tensor(weight)
        out_channels = weight.shape[0] if weight.dim() == 4 else 0
        per_channel = isinstance(factor, Sequence) or (isinstance(factor, Tensor) and factor.dim() > 0)
        factors = [float(f) for f in factor] if per_channel else [float(factor)] * out_channels
        if len(factors) != out_channels:
            raise ValueError(f"{name}: factor has {len(factors)} values, weight has {out_channels} output channels")
        raw = [check_factor(f, settings.min_factor_bits, f"{name}: factor[{o}]") for o, f in enumerate(factors)]
        bias = torch.as_tensor(bias, dtype=torch.int64).reshape(-1)
        if bias.numel() != out_channels:
            raise ValueError(f"{name}: bias has {bias.numel()} values, weight has {out_channels} output channels")
        out = QParams(1.0, 0, 8, out_signed)
        requant = ApFixedRequant(settings, torch.tensor(raw), bias, relu, out, per_channel)
        return cls(weight, requant, QParams(1.0, 0, 8, in_signed), stride, padding, dilation, groups, name)

    def to_dict(self) -> dict:
        return {"type": "conv", "name": self.name, "weight": self.weight, "requant": self.requant.to_dict(),
                "in_q": self.in_q.to_dict(), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups}

    def __repr__(self) -> str:
        return (f"IntConv2d({self.name!r}, {self.kind}, {self.in_channels}->{self.out_channels}, "
                f"kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, relu={self.requant.relu})")


class IntLinear:
    """An integer linear layer ``(O, C)``; with ``pool`` it runs on the global sum of an
    ``(N, C, H, W)`` map (``pool = H*W``, the ``1 / (H*W)`` of average pooling is in the factor)."""

    def __init__(self, weight: Tensor, requant: Requant, in_q: QParams, pool: Optional[int] = None,
                 name: str = "linear") -> None:
        self.name = check_name(name, "name")
        self.weight = _int8_weight(weight, 2, name, "(O, C)")
        self.requant = requant
        self.in_q = in_q
        self.pool = None if pool is None else check_positive_int(pool, "pool")
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless every field is a plain value in range (see :meth:`IntConv2d.check`)."""
        name = check_name(self.name, "name")
        self.weight = _int8_weight(self.weight, 2, name, "(O, C)")
        if self.pool is not None:
            check_int(self.pool, f"{name}: pool", 1)
        _check_requant_and_input(self)

    in_channels = property(lambda self: self.weight.shape[1])
    out_channels = property(lambda self: self.weight.shape[0])
    out_q = property(lambda self: self.requant.out)
    kind = property(lambda self: "pool+linear" if self.pool else "linear")

    def check_input(self, x: Tensor) -> None:
        _check_codes(x, self.in_q, self.in_channels, self.name, 4 if self.pool else 2)
        if self.pool and x.shape[2] * x.shape[3] != self.pool:
            raise ValueError(f"{self.name}: input map {x.shape[2]}x{x.shape[3]} has {x.shape[2] * x.shape[3]} "
                             f"pixels, the pooled factor was made for {self.pool}")

    def accumulate(self, x: Tensor) -> Tensor:
        self.check_input(x)
        centred = x.to(torch.int64) - self.in_q.zero_point
        if self.pool:
            centred = centred.sum(dim=(2, 3))
        return _exact_int(centred.to(torch.float64) @ self.weight.to(torch.float64).T)

    def __call__(self, x: Tensor, stats: Optional[Stats] = None) -> Tensor:
        return self.requant(self.accumulate(x), stats)

    def worst_case_acc(self) -> int:
        low, high = self.in_q.range
        peak = max(abs(low - self.in_q.zero_point), abs(high - self.in_q.zero_point)) * (self.pool or 1)
        per_channel = self.weight.abs().sum(1) * peak
        if hasattr(self.requant, "multiplier"):
            per_channel = per_channel + self.requant.bias.abs()
        return int(per_channel.max())

    def to_dict(self) -> dict:
        return {"type": "linear", "name": self.name, "weight": self.weight, "requant": self.requant.to_dict(),
                "in_q": self.in_q.to_dict(), "pool": self.pool}

    def __repr__(self) -> str:
        return f"IntLinear({self.name!r}, {self.kind}, {self.in_channels}->{self.out_channels})"


IntLayer = Union[IntConv2d, IntLinear]


def layer_from_dict(dialect, data: dict, where: str = "layer") -> IntLayer:
    """Inverse of ``to_dict``; a malformed dict raises ``ValueError`` naming ``where`` and the field."""
    conv_fields, common = ["stride", "padding", "dilation", "groups"], ["name", "weight", "requant", "in_q"]
    kind = check_fields(data, where, ["type"], common + conv_fields + ["pool"])["type"]
    check_choice(kind, f"{where}.type", ("conv", "linear"))
    conv = kind == "conv"
    check_fields(data, where, ["type"] + common + (conv_fields if conv else ["pool"]))
    name = check_name(data["name"], f"{where}.name")
    requant = requant_from_dict(dialect, data["requant"], f"{where}.requant")
    in_q = QParams.from_dict(data["in_q"], f"{where}.in_q")
    try:
        if conv:
            return IntConv2d(data["weight"], requant, in_q, data["stride"], data["padding"], data["dilation"],
                             data["groups"], name)
        return IntLinear(data["weight"], requant, in_q, data["pool"], name)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def acc_bits_needed(value: int) -> int:
    """Signed bits that hold ``|acc| <= value``."""
    return max(int(value).bit_length() + 1, 2)


__all__ = ["IntConv2d", "IntLayer", "IntLinear", "acc_bits_needed", "int_range", "layer_from_dict", "normalize_pads"]
