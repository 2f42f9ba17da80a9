"""The one timer's arithmetic and order, with scripted timings instead of a clock: medians and
ranges over rounds, a ratio's range from per-round ratios, the "within noise" wording, the
interleaving order (warm-up first, then A, B, A, B), and CUDA synchronization wiring."""

from __future__ import annotations

import pytest
import torch

from leanconv import timing
from leanconv.timing import Spread, format_ms, format_ratio, ratio_spread, synchronized, time_interleaved


def _scripted(values):
    """A per-round ``measure`` returning ``values[name]`` in order for the callable named ``name``,
    recording the order it was asked in."""
    asked, left = [], {name: list(v) for name, v in values.items()}

    def measure(fn):
        asked.append(fn.__name__)
        return left[fn.__name__].pop(0)

    return measure, asked


def _named(name, log):
    def fn():
        log.append(name)
    fn.__name__ = name
    return fn


def test_spread_is_median_and_min_max():
    s = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.rounds) == (2.5, 1.0, 10.0, 4)  # median of 1, 2, 3, 10
    assert s.straddles(2.0) and not s.straddles(0.5)
    assert not Spread.of([1.0]).straddles(1.0)  # one round has no spread to straddle anything
    assert s.scaled(2.0) == Spread(1.25, 0.5, 5.0, 4)
    with pytest.raises(ValueError, match=r"values=\[\] must hold at least one measurement"):
        Spread.of([])


def test_interleaved_order_warmup_first_then_round_robin():
    calls = []
    fns = [_named("a", calls), _named("b", calls), _named("c", calls)]
    measure, asked = _scripted({"a": [1, 2], "b": [3, 4], "c": [5, 6]})
    result = time_interleaved(fns, rounds=2, warmup=2, measure=measure)
    assert calls == ["a", "b", "c", "a", "b", "c"]  # warm-up: every callable, interleaved, before any timing
    assert asked == ["a", "b", "c", "a", "b", "c"]  # rounds: a, b, c, then a, b, c again
    assert result.samples == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_interleaved_medians_spreads_and_ratio_from_per_round_ratios():
    # A drifts (machine load) but B/A stays near 2 round by round; medians alone would hide that.
    a, b = [10.0, 20.0, 12.0, 40.0, 11.0], [20.0, 41.0, 23.0, 80.0, 22.0]
    measure, _ = _scripted({"a": a, "b": b})
    result = time_interleaved([_named("a", []), _named("b", [])], rounds=5, warmup=0, measure=measure)
    assert result.spread(0) == Spread(12.0, 10.0, 40.0, 5)
    assert result.spread(1) == Spread(23.0, 20.0, 80.0, 5)
    ratio = result.ratio(1, 0)  # per round: 2.0, 2.05, 1.9166.., 2.0, 2.0
    assert ratio.median == pytest.approx(2.0) and ratio.rounds == 5
    assert ratio.low == pytest.approx(23 / 12) and ratio.high == pytest.approx(41 / 20)
    assert not ratio.straddles(1.0)
    assert format_ratio(ratio) == "2.00x (1.92-2.05)"
    # the latencies' own ranges overlap completely (10-40 vs 20-80): only the per-round ratio is informative


def test_within_noise_wording():
    noisy = ratio_spread([10.0, 9.0, 13.0], [10.0, 10.0, 10.0])  # 1.0, 0.9, 1.3
    assert noisy.straddles(1.0)
    assert format_ratio(noisy) == "0.90-1.30x: within noise"
    assert format_ratio(Spread(1.52, 1.40, 1.61, 3)) == "1.52x (1.40-1.61)"
    assert format_ratio(Spread(0.04, 0.03, 0.05, 3)) == "0.04x (0.03-0.05)"
    assert format_ratio(Spread(1.05, 1.05, 1.05, 1)) == "1.05x"  # one round: a figure, no range
    assert format_ms(Spread(10.0, 9.8125, 10.4375, 3)) == "10.000 (9.812-10.438)"
    assert format_ms(Spread(0.86, 0.86, 0.86, 1)) == "0.860"
    with pytest.raises(ValueError, match="numerator and denominator must hold the same rounds, got 2 and 1"):
        ratio_spread([1.0, 2.0], [1.0])


def test_callables_run_in_inference_mode():
    seen = []
    time_interleaved([lambda: seen.append(torch.is_inference_mode_enabled())], rounds=1, warmup=1,
                     measure=lambda fn: fn() or 1.0)
    assert seen == [True, True]


def test_measure_latency_is_one_round_of_the_same_timer(monkeypatch):
    asked = []

    def fake_adaptive(fn, min_run_time, num_threads):
        asked.append((min_run_time, num_threads))
        fn()
        return 7.5

    monkeypatch.setattr(timing, "adaptive_ms", fake_adaptive)
    calls = []
    module = torch.nn.Identity()
    module.register_forward_hook(lambda *args: calls.append(1))
    assert timing.measure_latency(module, torch.zeros(1), min_run_time=0.05, warmup=2, num_threads=3) == 7.5
    assert asked == [(0.05, 3)] and len(calls) == 3  # two warm-up calls, one in the (scripted) round


def test_cuda_callables_synchronize(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    fn = lambda: 4  # noqa: E731
    assert synchronized(fn, torch.device("cpu")) is fn
    wrapped = synchronized(fn, torch.device("cuda", 1))
    assert wrapped() == 4 and synced == [torch.device("cuda", 1)]


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"fns=\[\] must be a non-empty sequence of callables"):
        time_interleaved([])
    with pytest.raises(TypeError, match=r"fns\[1\]=int must be callable with no arguments"):
        time_interleaved([lambda: None, 3])
    with pytest.raises(ValueError, match=r"rounds=0 must be an int >= 1"):
        time_interleaved([lambda: None], rounds=0)
    with pytest.raises(ValueError, match=r"warmup=-1 must be an int >= 0"):
        time_interleaved([lambda: None], warmup=-1)
