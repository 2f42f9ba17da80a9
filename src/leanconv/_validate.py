"""Argument and input checks shared by every layer.

Each check raises ``ValueError`` whose message names the argument, its value and the rule, so
a user can fix the call without reading the source.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch


def pair(value: Any, name: str) -> Tuple[int, int]:
    """Normalize an int or a 2-sequence of ints to ``(h, w)``."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be an int or a pair of ints, not a bool")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]))
    raise ValueError(f"{name}={value!r} must be an int or a pair of ints (h, w)")


def check_positive_pair(value: Any, name: str) -> Tuple[int, int]:
    """``pair(value)`` with every entry >= 1 (kernel sizes, strides, dilations)."""
    result = pair(value, name)
    if any(v < 1 for v in result):
        raise ValueError(f"{name}={value!r} must be >= 1 in every dimension")
    return result


def torch_device(value: Any, name: str = "device") -> torch.device:
    """``value`` read as a torch device; a string torch cannot read is one ValueError naming ``name``."""
    try:
        return torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None


def check_positive_int(value: Any, name: str) -> int:
    """An int >= 1 (channel counts, groups, depth multipliers, ranks)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an int >= 1")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be >= 1")
    return value


def check_divisible(value: int, name: str, divisor: int, divisor_name: str) -> None:
    if value % divisor != 0:
        raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {tuple(choices)}")


def check_probability(value: float, name: str) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value!r} must be in [0, 1)")
    return float(value)


def check_callable_or_none(value: Optional[Callable[..., Any]], name: str) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"{name}={value!r} must be a callable returning an nn.Module, or None")


def check_input(x: torch.Tensor, channels: int, layer: str) -> None:
    """Raise before any compute when ``x`` is not ``(N, channels, H, W)``.

    Skipped while ``torch.fx`` traces symbolically (shapes are proxies then).
    """
    if isinstance(x, torch.fx.Proxy):
        return
    if x.dim() != 4:
        raise ValueError(
            f"{layer}: input must be 4-D (N, C, H, W) with C={channels}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{layer}: input has {x.shape[1]} channels, expected {channels} "
            f"(shape {tuple(x.shape)}, expected (N, {channels}, H, W))"
        )
