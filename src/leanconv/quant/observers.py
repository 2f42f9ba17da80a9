"""Calibration observers: the range of a tensor over a few batches.

:class:`MinMaxObserver` keeps the running min and max. :class:`PercentileObserver` keeps a
bounded random sample of the values and reports the ``percentile``-th and
``(100 - percentile)``-th percentiles, so a few outliers do not stretch the scale.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

OBSERVERS = ("minmax", "percentile")


class MinMaxObserver:
    """Running ``(min, max)`` of every value seen."""

    def __init__(self) -> None:
        self.low = float("inf")
        self.high = float("-inf")

    def observe(self, x: Tensor) -> None:
        self.low = min(self.low, float(x.min()))
        self.high = max(self.high, float(x.max()))

    def range(self) -> Tuple[float, float]:
        if self.low > self.high:
            raise ValueError("the observer saw no data: pass at least one calibration batch")
        return self.low, self.high


class PercentileObserver:
    """``(p_low, p_high)`` percentiles of a random sample of at most ``max_samples`` values per batch."""

    def __init__(self, percentile: float = 99.99, max_samples: int = 200_000, seed: int = 0) -> None:
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile={percentile!r} must be in (50, 100]")
        self.percentile = float(percentile)
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: List[Tensor] = []

    def observe(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1).to(torch.float64)
        if flat.numel() > self.max_samples:
            flat = flat[torch.randperm(flat.numel(), generator=self.generator)[: self.max_samples]]
        self.samples.append(flat)

    def range(self) -> Tuple[float, float]:
        if not self.samples:
            raise ValueError("the observer saw no data: pass at least one calibration batch")
        values, _ = torch.cat(self.samples).sort()
        last = values.numel() - 1
        high = values[round(last * self.percentile / 100.0)]
        low = values[round(last * (1.0 - self.percentile / 100.0))]
        return float(low), float(high)


def make_observer(kind: str, percentile: float = 99.99):
    """A fresh observer by name: ``'minmax'`` or ``'percentile'``."""
    if kind == "minmax":
        return MinMaxObserver()
    if kind == "percentile":
        return PercentileObserver(percentile)
    raise ValueError(f"observer={kind!r} must be one of {OBSERVERS}")


__all__ = ["MinMaxObserver", "OBSERVERS", "PercentileObserver", "make_observer"]
