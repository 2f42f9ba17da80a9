"""Conversion under a measured-latency budget: greedy allocation on timings, layers whose efficient
form is slower stay dense, timings cached per device. The timings are scripted (a known cost per
module) so the expected choice can be worked out by hand; no test here times anything."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leanconv
from leanconv import convert
from leanconv.conversion.latency import LatencyCache, device_key
from leanconv.conversion.select import Choice, allocate, latency_ladder, ladder, thin

SIZE = (2, 8, 16, 16)


class Net(nn.Module):
    """Two 3x3 convs: ``slow`` is the one whose separable form we script as slower than dense."""

    def __init__(self):
        super().__init__()
        self.fast = nn.Conv2d(8, 16, 3, padding=1)
        self.slow = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.slow(torch.relu(self.fast(x)))


def scripted(module: nn.Module, x: torch.Tensor) -> float:
    """Fake ms: 1 per 1000 weights; the separable form of the 16->16 conv costs 100 ms; the
    whole Net 5 ms more than its two convs."""
    if isinstance(module, Net):
        return 5.0 + scripted(module.fast, x) + scripted(module.slow, x)
    if isinstance(module, leanconv.DepthwiseSeparableConv2d) and module.in_channels == 16:
        return 100.0
    return sum(p.numel() for p in module.parameters()) / 1000


def test_slower_form_stays_dense_and_budget_is_met(tmp_path):
    model = Net().eval()
    cache = LatencyCache(tmp_path / "lat.json", measure=scripted)
    dense_fast = (16 * 8 * 9 + 16) / 1000
    dense_slow = (16 * 16 * 9 + 16) / 1000
    full_ms = 5.0 + dense_fast + dense_slow
    result = convert(model, to="dsconv", latency_budget=full_ms - 0.5, input_size=SIZE, latency_cache=cache,
                     keep_stem=False)
    by_path = {r.path: r for r in result.layers}
    assert not by_path["slow"].converted and "no rank of dsconv measured faster" in by_path["slow"].reason
    assert by_path["fast"].converted
    # the largest depth multiplier whose scripted time meets the budget: m weights 8*m*9 + 8*m*16 + 16
    m = by_path["fast"].options["depth_multiplier"]
    allowed = dense_fast - 0.5
    ms = lambda m: (8 * m * 9 + 8 * m * 16 + 16) / 1000  # noqa: E731
    assert ms(m) <= allowed
    assert by_path["fast"].latency_after_ms == pytest.approx(ms(m))
    assert result.original_latency_ms == pytest.approx(full_ms)
    assert result.predicted_latency_ms == pytest.approx(5.0 + ms(m) + dense_slow)
    assert result.predicted_latency_ms <= full_ms - 0.5
    assert "measured latency" in result.to_markdown()
    # thinned ladder: at most 8 rungs were timed per layer, none twice
    assert cache.measured <= 2 * 8 and (tmp_path / "lat.json").exists()


def test_timings_are_cached_across_runs_per_device(tmp_path):
    model = Net().eval()
    first = LatencyCache(tmp_path / "lat.json", measure=scripted)
    convert(model, to="asymmetric", latency_budget=100.0, input_size=SIZE, latency_cache=first)
    assert first.measured > 0
    calls = []
    second = LatencyCache(tmp_path / "lat.json", measure=lambda m, x: calls.append(type(m)) or scripted(m, x))
    again = convert(model, to="asymmetric", latency_budget=100.0, input_size=SIZE, latency_cache=second)
    assert second.measured == 0 and calls == [Net]  # only the whole model is timed again
    assert again.plan == convert(model, to="asymmetric", latency_budget=100.0, input_size=SIZE,
                                 latency_cache=first).plan
    assert device_key(torch.device("cpu")).startswith(f"torch {torch.__version__}|cpu|cpu/")


def test_latency_ladder_keeps_only_rungs_faster_than_every_rung_above():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    rungs = ladder(conv, "dsconv", (16, 16))
    times = iter([1.0, 0.9, 1.2, 0.5, 0.7, 0.4, 0.3, 0.2, 0.1])

    class Scripted:
        def latency(self, description, module, shape):
            return next(times)

    chain = latency_ladder(conv, "dsconv", rungs, (1, 8, 16, 16), Scripted())
    assert [c.latency_ms for c in chain] == sorted((c.latency_ms for c in chain), reverse=True)
    assert 1.2 not in [c.latency_ms for c in chain] and chain[0].options is None
    assert len(thin(list(range(20)), 8)) == 8 and thin(list(range(20)), 8)[-1] == 19  # type: ignore[arg-type]


def test_allocate_on_latency_takes_least_damage_per_ms():
    ladders = {"x": [Choice(None, 0, 0.0, 2.0), Choice({"r": 1}, 0, 0.5, 1.0)],
               "y": [Choice(None, 0, 0.0, 2.0), Choice({"r": 1}, 0, 0.1, 1.5)]}
    # y saves 0.5 ms at 0.2 per ms, x saves 1 ms at 0.5 per ms: y first, then x
    assert allocate(ladders, 3.6, cost="latency_ms")["x"].options is None
    chosen = allocate(ladders, 3.0, cost="latency_ms")
    assert chosen["x"].options == {"r": 1} and chosen["y"].options == {"r": 1}
    with pytest.raises(ValueError, match="latency_budget=2 is below 2.5 ms"):
        allocate(ladders, 2, cost="latency_ms")


@pytest.mark.parametrize("kwargs, match", [
    ({"latency_budget": 0}, "latency_budget=0 must be a positive"),
    ({"latency_budget": 1.0}, "latency_budget needs input_size"),
    ({"latency_budget": 1.0, "rank": 1, "input_size": SIZE}, "at most one of"),
])
def test_invalid_latency_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(Net(), to="dsconv", **kwargs)
