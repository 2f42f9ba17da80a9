"""One padding vocabulary for every conv kind.

``padding`` may be an int, an ``(h, w)`` tuple, ``'valid'`` (no padding) or ``'same'``.

``'same'`` follows the TensorFlow rule for any stride and dilation: a conv gives
``ceil(in / stride)`` outputs per spatial dimension, a transposed conv ``in * stride``; when
the total padding is odd, the extra pixel goes to the right/bottom. Whenever the amount is
the same on both sides and does not depend on the input size (stride 1 and an even total),
it resolves to ordinary static symmetric padding so that a plain ``nn.Conv2d`` does the job;
otherwise an explicit pad is applied (see :class:`leanconv.layers.conv.Conv2dSame`).

A transposed conv with ``'same'`` is the adjoint (the input gradient) of the conv with
``'same'`` padding and the same kernel, stride and dilation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from leanconv._validate import pair, check_positive_pair

PaddingArg = Union[int, Tuple[int, int], str]
"""What every layer accepts as ``padding``."""

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def check_padding(padding: PaddingArg, name: str = "padding") -> None:
    """Raise ``ValueError`` unless ``padding`` belongs to the vocabulary."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{name}={padding!r} must be an int, an (h, w) tuple, 'same' or 'valid'")
        return
    values = pair(padding, name)
    if any(v < 0 for v in values):
        raise ValueError(f"{name}={padding!r} must be non-negative")


def check_padding_mode(padding_mode: str, name: str = "padding_mode") -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{name}={padding_mode!r} must be one of {PADDING_MODES}")


def effective_kernel(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel: ``d*(k-1)+1``."""
    return dilation * (kernel - 1) + 1


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """(before, after) padding of one dimension under the TF 'same' rule (extra pixel after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def is_static_same(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> bool:
    """True when 'same' padding is symmetric and independent of the input size."""
    return all(s == 1 and (d * (k - 1)) % 2 == 0 for k, s, d in zip(kernel, stride, dilation))


def resolve_padding(
    padding: PaddingArg,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> Tuple[int, int] | None:
    """Static symmetric ``(ph, pw)`` for ``padding``, or ``None`` when an explicit pad is needed.

    ``None`` only happens for ``'same'`` with a stride > 1 or an odd total in some dimension.
    """
    check_padding(padding)
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if not is_static_same(kernel_size, stride, dilation):
            return None
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))  # type: ignore[return-value]
    return pair(padding, "padding")


def axis_padding(padding: PaddingArg, axis: int) -> PaddingArg:
    """Padding of a stage whose kernel spans only ``axis`` (0: rows, 1: columns) of a kxk conv.

    'same' and 'valid' act per dimension, so they pass through; numbers keep only that axis.
    """
    if isinstance(padding, str):
        return padding
    ph, pw = pair(padding, "padding")
    return (ph, 0) if axis == 0 else (0, pw)


def pad_same(
    x: torch.Tensor,
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    dilation: Tuple[int, int],
    mode: str = "zeros",
) -> torch.Tensor:
    """Pad the last two dims of ``x`` so that a conv with padding 0 gives ``ceil(in/stride)``."""
    top, bottom = same_pad_amounts(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    left, right = same_pad_amounts(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    if top == bottom == left == right == 0:
        return x
    if mode == "zeros":
        return F.pad(x, (left, right, top, bottom))
    return F.pad(x, (left, right, top, bottom), mode=mode)


def conv_output_size(
    size: int, kernel: int, stride: int, padding: int | str, dilation: int
) -> int:
    """Output length of one dimension of a conv (``nn.Conv2d`` formula, or 'same'/'valid')."""
    if padding == "same":
        return math.ceil(size / stride)
    pad = 0 if padding == "valid" else int(padding)
    return (size + 2 * pad - effective_kernel(kernel, dilation)) // stride + 1


def conv_output_hw(
    in_hw: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: PaddingArg,
    dilation: Sequence[int],
) -> Tuple[int, int]:
    """Output ``(H, W)`` of a conv with any padding of the vocabulary."""
    pads = padding if isinstance(padding, str) else pair(padding, "padding")
    return tuple(  # type: ignore[return-value]
        conv_output_size(n, k, s, pads if isinstance(pads, str) else pads[i], d)
        for i, (n, k, s, d) in enumerate(zip(in_hw, kernel_size, stride, dilation))
    )


@dataclass(frozen=True)
class TransposedPadding:
    """How a transposed conv realizes its padding: ``nn.ConvTranspose2d`` arguments plus a crop.

    ``crop_end`` removes extra rows/columns at the bottom/right after the transposed conv; it is
    non-zero only for 'same' with an odd total where PyTorch cannot crop asymmetrically.
    """

    padding: Tuple[int, int]
    output_padding: Tuple[int, int]
    crop_end: Tuple[int, int] = (0, 0)


def resolve_transposed_padding(
    padding: PaddingArg,
    output_padding: int | Tuple[int, int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> TransposedPadding:
    """Resolve ``padding`` for a transposed conv. ``'same'`` gives ``out = in * stride``."""
    check_padding(padding)
    op = pair(output_padding, "output_padding")
    if padding != "same":
        pads = (0, 0) if padding == "valid" else pair(padding, "padding")
        for o, s, d in zip(op, stride, dilation):
            if o < 0 or o >= max(s, d):
                raise ValueError(
                    f"output_padding={output_padding!r} must be >= 0 and smaller than stride or "
                    f"dilation (stride={tuple(stride)}, dilation={tuple(dilation)})"
                )
        return TransposedPadding(pads, op)
    if any(op):
        raise ValueError(f"output_padding={output_padding!r} must be 0 with padding='same'")
    p, o, c = [], [], []
    for k, s, d in zip(kernel_size, stride, dilation):
        # Adjoint of conv 'same' on an input of size in*s: crop 'before' at the start and
        # 'after' at the end of the full transposed output, or pad at the end when negative.
        total = effective_kernel(k, d) - s
        if total < 0:
            p.append(0), o.append(-total), c.append(0)
        else:
            before = total // 2
            p.append(before), o.append(0), c.append(total - 2 * before)
    return TransposedPadding(tuple(p), tuple(o), tuple(c))  # type: ignore[arg-type]


def conv_transpose_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, output_padding: int = 0
) -> int:
    """``nn.ConvTranspose2d`` output length of one dimension."""
    return (size - 1) * stride - 2 * padding + effective_kernel(kernel, dilation) + output_padding


__all__ = [
    "PaddingArg",
    "PADDING_MODES",
    "TransposedPadding",
    "axis_padding",
    "check_padding",
    "check_padding_mode",
    "check_positive_pair",
    "conv_output_hw",
    "conv_output_size",
    "conv_transpose_output_size",
    "effective_kernel",
    "is_static_same",
    "pad_same",
    "resolve_padding",
    "resolve_transposed_padding",
    "same_pad_amounts",
]
