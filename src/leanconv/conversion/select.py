"""Rank selection: per-layer ranks that meet a global MAC or latency budget with the least damage.

Every convertible layer has a ladder of choices: dense, then the target kind at decreasing
ranks. Each step down a ladder saves MACs and discards energy (the squared weight error,
relative to the layer's own energy, from the exact factorization). Greedy allocation: start
all layers dense and repeatedly take the step with the least discarded energy per MAC (or
per measured millisecond) saved until the model fits the budget.

For a latency budget each rung is timed on the current device (:mod:`leanconv.conversion.latency`)
and the ladder keeps only rungs faster than every rung above them: a layer whose efficient form
is slower than the dense conv on this device stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from torch import nn

from leanconv.kinds import get_kind


@dataclass
class Choice:
    """One rung of a layer's ladder."""

    options: Optional[Dict]  # None: stay dense
    macs: int
    discarded: float  # relative discarded energy, or relative squared output error (0 for dense)
    latency_ms: Optional[float] = None  # measured, for a latency budget


def ladder(conv: nn.Conv2d, target: str, in_hw: Tuple[int, int], extra: Optional[Dict] = None,
           inputs: Optional[Sequence[torch.Tensor]] = None) -> List[Choice]:
    """Dense, then every rank of ``target`` that saves MACs, in decreasing MAC order.

    A rung's damage is the relative discarded weight energy, or, when ``inputs`` (this
    layer's inputs on calibration data) are given, the squared relative error of the layer's
    output on them, which weighs the kernel's directions by how the data excites them.
    """
    from leanconv.conversion.surgery import _full_rank, _options_for, _spec, build_module, factorize_conv, order_variants

    with torch.no_grad():
        reference = [conv(x) for x in inputs] if inputs else None
        scale = sum(float(y.double().pow(2).sum()) for y in reference) if reference else 0.0

    dense = Choice(None, get_kind("dense").macs(_spec(conv), in_hw), 0.0)
    candidates: List[Choice] = []
    for variant in order_variants(target, extra):  # both stage orders when extra asks for 'auto'
        full = _full_rank(target, conv, variant)
        top = next(v for v in full.values() if not isinstance(v, str))
        top = top if isinstance(top, int) else min(conv.in_channels, conv.out_channels)
        for rank in range(top, 0, -1):
            options = _options_for(target, conv, rank, variant)
            macs = get_kind(target).macs(_spec(conv, **options), in_hw)
            if macs >= dense.macs:
                continue
            result = factorize_conv(conv, target, options)
            damage = result.discarded_energy / max(result.total_energy, 1e-30)
            if reference:
                module = build_module(conv, target, options, result).eval()
                with torch.no_grad():
                    error = sum(float((module(x) - y).double().pow(2).sum()) for x, y in zip(inputs, reference))
                damage = error / max(scale, 1e-30)
            candidates.append(Choice(options, macs, damage))
    return [dense, *pareto(candidates)]


def pareto(choices: List[Choice]) -> List[Choice]:
    """The choices no other beats on both MACs and damage, in decreasing MAC order: each step
    down the ladder then saves MACs for more damage."""
    kept: List[Choice] = []
    for choice in sorted(choices, key=lambda c: (c.macs, c.discarded)):
        if not kept or choice.discarded < kept[-1].discarded:
            kept.append(choice)
    return kept[::-1]


def thin(rungs: List[Choice], keep: int = 8) -> List[Choice]:
    """Dense, the lowest rank and rungs spread evenly in between (at most ``keep``): what a
    latency ladder measures, since timing every rank of a wide layer would take minutes."""
    if len(rungs) <= keep:
        return list(rungs)
    step = (len(rungs) - 1) / (keep - 1)
    return [rungs[round(i * step)] for i in range(keep)]


def latency_ladder(conv: nn.Conv2d, target: str, rungs: List[Choice], input_shape: Tuple[int, ...],
                   cache) -> List[Choice]:
    """``rungs`` (from :func:`ladder`, thinned) with measured latencies, keeping only rungs
    faster than every rung above them; ``[dense]`` alone when no rung beats the dense conv."""
    from dataclasses import replace

    from leanconv.conversion.surgery import build_module, describe

    timed: List[Choice] = []
    for rung in thin(rungs):
        kind = "dense" if rung.options is None else target
        module = build_module(conv, kind, rung.options or {})  # fresh weights: timing only
        ms = cache.latency(describe(conv, kind, rung.options or {}), module, input_shape)
        if not timed or ms < timed[-1].latency_ms:
            timed.append(replace(rung, latency_ms=ms))
    return timed


def allocate(ladders: Dict[str, List[Choice]], budget: float, fixed: float = 0, cost: str = "macs") -> Dict[str, Choice]:
    """Greedy choice per layer so that ``fixed + sum(chosen cost) <= budget``.

    ``cost`` is ``'macs'`` or ``'latency_ms'`` (the Choice field the budget is in). Raises
    ``ValueError`` when even the lowest rank everywhere does not fit.
    """
    name = "mac_budget" if cost == "macs" else "latency_budget"

    def of(choice: Choice) -> float:
        return getattr(choice, cost)

    position = {path: 0 for path in ladders}
    total = fixed + sum(of(rungs[0]) for rungs in ladders.values())
    floor = fixed + sum(of(rungs[-1]) for rungs in ladders.values())
    if floor > budget:
        unit = "MACs" if cost == "macs" else "ms (measured)"
        raise ValueError(f"{name}={budget:,} is below {floor:,.6g} {unit}, the cost at the lowest rank of every "
                         "convertible layer (plus the layers that cannot be converted)")
    while total > budget:
        best, best_price = None, float("inf")
        for path, rungs in ladders.items():
            i = position[path]
            if i + 1 >= len(rungs):
                continue
            saved = of(rungs[i]) - of(rungs[i + 1])
            price = (rungs[i + 1].discarded - rungs[i].discarded) / saved
            if price < best_price:
                best, best_price = path, price
        position[best] += 1  # type: ignore[index]
        rungs = ladders[best]  # type: ignore[index]
        total -= of(rungs[position[best] - 1]) - of(rungs[position[best]])  # type: ignore[index]
    return {path: ladders[path][i] for path, i in position.items()}


__all__ = ["Choice", "allocate", "ladder", "latency_ladder", "pareto", "thin"]
