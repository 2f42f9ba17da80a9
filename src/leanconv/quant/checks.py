"""Checks for values that reach generated code or come from a saved file.

A quantized model is read back from a ``.pt`` file that may have been received from someone
else, and its layer names, types, shapes and integer settings are pasted into generated C++,
Makefiles and file names. Each check here accepts only the plain Python value it expects
(a name of safe characters, a real ``int`` in a range, a ``bool``, an integer tensor) and
otherwise raises one ``ValueError`` that names the field and the rule.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

NAME_RULE = "letters, digits, '_' and '.', starting with a letter, digit or '_', at most 200 characters"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,199}")


def check_name(value: Any, field: str) -> str:
    """A layer name (a module path such as ``features.0.conv``) safe to paste into generated code."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{field}={value!r} must be a name of {NAME_RULE}")
    return value


def check_int(value: Any, field: str, low: int, high: float = math.inf) -> int:
    """An integer (not a bool, float or string) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        bound = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
        raise ValueError(f"{field}={value!r} must be an int {bound}")
    return int(value)


def check_ints(values: Any, field: str, count: int, low: int) -> tuple:
    """A tuple or list of exactly ``count`` ints, each ``>= low``."""
    if not isinstance(values, (tuple, list)) or len(values) != count:
        raise ValueError(f"{field}={values!r} must be a list of {count} ints >= {low}")
    return tuple(check_int(v, f"{field}[{i}]", low) for i, v in enumerate(values))


def check_bool(value: Any, field: str) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}={value!r} must be True or False")
    return value


def check_real(value: Any, field: str) -> float:
    """A finite real number (an int or float, not a bool or string) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{field}={value!r} must be a finite real number")
    return float(value)


def check_text(value: Any, field: str, limit: int = 200) -> str:
    """Printable text (no newline or control character) of at most ``limit`` characters."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise ValueError(f"{field}={value!r} must be printable text (no control characters) of at most "
                         f"{limit} characters")
    return value


def int_tensor(value: Any, field: str) -> Tensor:
    """``value`` as an int64 tensor; refused unless it holds integers (no floats, bools or strings)."""
    if isinstance(value, Tensor):
        tensor = value
    else:
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{field} must be a tensor of integers, got {type(value).__name__}") from None
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{field} must be a tensor of integers, got dtype {tensor.dtype}")
    return tensor.to(torch.int64)


def check_fields(data: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> Mapping:
    """A dict of a saved file holding every ``required`` key and nothing outside ``required + optional``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a dict (a file from QuantizedModel.save), got {type(data).__name__}")
    required = list(required)
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"{where} lacks the field(s) {missing} (a file from QuantizedModel.save)")
    unknown = sorted(str(key) for key in data if key not in required and key not in optional)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}; allowed: {required + list(optional)}")
    return data


__all__ = [
    "NAME_RULE",
    "check_bool",
    "check_fields",
    "check_int",
    "check_ints",
    "check_name",
    "check_real",
    "check_text",
    "int_tensor",
]
