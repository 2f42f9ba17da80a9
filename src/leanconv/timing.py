"""The one timer: every latency leanconv reports is measured here.

:func:`time_interleaved` times several callables in interleaved rounds (warm-up, then A, B,
A, B, ...): a change in machine load during the measurement hits every callable alike, and the
spread over rounds says how far one figure can be trusted. Each round times one callable with
``measure`` (default: the median of ``torch.utils.benchmark`` adaptive runs, in inference mode,
on ``num_threads`` threads, 1 unless told, whatever ``torch.get_num_threads()`` says). A ratio
of two callables gets its own spread from the per-round ratios (:meth:`Interleaved.ratio`), and
:func:`format_ratio` says "within noise" instead of a figure when that spread straddles 1.
:func:`measure_latency` is the one-callable, one-round case. ``measure`` can be replaced (by a
scripted timing in tests, for one), so the arithmetic is testable without a clock.

This room sits apart from :mod:`leanconv.bench` (deployment settings) so that analysis and
conversion can time a layer without importing them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch.utils import benchmark

Measure = Callable[[Callable[[], Any]], float]  # times one callable once (one round), in ms


@dataclass(frozen=True)
class Spread:
    """The median of per-round values and their range (``low`` = min, ``high`` = max over rounds)."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        """Median and min/max of ``values`` (one per round; at least one)."""
        if not values:
            raise ValueError("values=[] must hold at least one measurement")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)), len(values))

    def straddles(self, value: float = 1.0) -> bool:
        """True when ``value`` lies within the range (needs two rounds or more: one round has no spread)."""
        return self.rounds > 1 and self.low <= value <= self.high

    def scaled(self, factor: float) -> "Spread":
        """Every figure divided by ``factor`` (> 0): a speedup's spread as a realized efficiency's."""
        return Spread(self.median / factor, self.low / factor, self.high / factor, self.rounds)


@dataclass
class Interleaved:
    """What :func:`time_interleaved` measured: ``samples[i][r]`` is callable ``i`` in round ``r``, in ms."""

    samples: List[List[float]]

    def spread(self, index: int) -> Spread:
        """Callable ``index``: median latency over rounds and its range."""
        return Spread.of(self.samples[index])

    def ratio(self, numerator: int, denominator: int) -> Spread:
        """``numerator`` time / ``denominator`` time per round (a speedup of ``denominator``
        over ``numerator``), with its median and range over rounds."""
        return ratio_spread(self.samples[numerator], self.samples[denominator])


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> Spread:
    """Per-round ratios ``numerator[r] / denominator[r]`` (same rounds, same length), their median and range."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"numerator and denominator must hold the same rounds, got {len(numerator)} and "
                         f"{len(denominator)} values")
    return Spread.of([a / b for a, b in zip(numerator, denominator)])


def format_ratio(spread: Spread, digits: int = 2) -> str:
    """``'1.52x (1.40-1.61)'``; ``'0.90-1.30x: within noise'`` when the range straddles 1; ``'1.52x'`` for one round."""
    if spread.rounds < 2:
        return f"{spread.median:.{digits}f}x"
    if spread.straddles(1.0):
        return f"{spread.low:.{digits}f}-{spread.high:.{digits}f}x: within noise"
    return f"{spread.median:.{digits}f}x ({spread.low:.{digits}f}-{spread.high:.{digits}f})"


def format_ms(spread: Spread, digits: int = 3) -> str:
    """``'10.000 (9.812-10.431)'`` (median, then the range over rounds); ``'10.000'`` for one round."""
    if spread.rounds < 2:
        return f"{spread.median:.{digits}f}"
    return f"{spread.median:.{digits}f} ({spread.low:.{digits}f}-{spread.high:.{digits}f})"


def synchronized(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by ``torch.cuda.synchronize`` on a CUDA ``device`` (so its time covers the
    kernels, not only their launch); ``fn`` itself elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def call() -> Any:
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return call


def adaptive_ms(fn: Callable[[], Any], min_run_time: float = 0.2, num_threads: int = 1) -> float:
    """One round: the median of ``torch.utils.benchmark`` adaptive runs of ``fn()``, in ms."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
    # a noisy machine would keep adaptive_autorange going for its default 10 s: cap it
    return timer.adaptive_autorange(min_run_time=min_run_time, max_run_time=max(1.0, 5 * min_run_time)).median * 1e3


def _check_timing(fns: Sequence[Callable[[], Any]], rounds: int, warmup: int) -> None:
    if isinstance(fns, (str, bytes)) or not isinstance(fns, Sequence) or not fns:
        raise ValueError(f"fns={fns!r} must be a non-empty sequence of callables")
    for index, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(f"fns[{index}]={type(fn).__name__} must be callable with no arguments")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be an int >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an int >= 0")


def time_interleaved(fns: Sequence[Callable[[], Any]], *, rounds: int = 3, warmup: int = 3,
                     min_run_time: float = 0.2, num_threads: int = 1, measure: Optional[Measure] = None,
                     on_measured: Optional[Callable[[int], None]] = None) -> Interleaved:
    """Time every callable in ``fns`` in ``rounds`` interleaved rounds, after ``warmup`` calls of
    each (also interleaved), all in inference mode.

    ``measure(fn)`` times one callable for one round and returns milliseconds; by default
    :func:`adaptive_ms` with ``min_run_time`` seconds on ``num_threads`` threads. A CUDA
    callable must synchronize itself (:func:`synchronized`). ``on_measured(index)`` is called
    after each measurement (a progress bar).
    """
    _check_timing(fns, rounds, warmup)
    if measure is None:
        def measure(fn: Callable[[], Any]) -> float:
            return adaptive_ms(fn, min_run_time, num_threads)
    samples: List[List[float]] = [[] for _ in fns]
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        for _ in range(rounds):
            for index, fn in enumerate(fns):
                samples[index].append(float(measure(fn)))
                if on_measured is not None:
                    on_measured(index)
    return Interleaved(samples)


def measure_latency(module: torch.nn.Module, x: torch.Tensor, min_run_time: float = 0.2, warmup: int = 3,
                    *, num_threads: int = 1) -> float:
    """Median latency of ``module(x)`` in milliseconds (inference mode, CUDA synchronized),
    timed on ``num_threads`` CPU threads (``torch.utils.benchmark``'s default: 1): one round of
    :func:`time_interleaved`."""
    call = synchronized(lambda: module(x), x.device)
    return time_interleaved([call], rounds=1, warmup=warmup, min_run_time=min_run_time,
                            num_threads=num_threads).spread(0).median


__all__ = ["Interleaved", "Measure", "Spread", "adaptive_ms", "format_ms", "format_ratio", "measure_latency",
           "ratio_spread", "synchronized", "time_interleaved"]
