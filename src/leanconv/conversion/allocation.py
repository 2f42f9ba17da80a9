"""Which point of each layer's latency/error front to take so the whole model meets a latency
budget with the least damage: pure functions on numbers, no modules, no timing.

Each layer offers points ``(ms, damage)``: the dense conv (damage 0) and its measured
candidates. A point slower *and* worse than another is never worth taking (:func:`front`).
Choosing one point per layer under a total-latency budget is a multiple-choice knapsack. It
is solved exactly (:func:`allocate`) by a dynamic program over the layers that keeps, after
each layer, only the partial mixes no other partial mix beats on both latency and damage
(and that can still meet the budget). The sizes here (tens of layers, a few front points
each) keep those sets to thousands at most. The greedy walk on error per millisecond saved
(equivalently a Lagrangian sweep) was the other choice; it only reaches points on each
layer's convex hull and, on real fronts with dents, gave up to 1.5x the damage of the exact
mix in a randomized check (``tests/test_allocation.py`` compares with brute force).

Damage adds over layers: it is the squared relative output error of each layer (errors of
independent layers add in energy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

_EPS = 1e-12


@dataclass(frozen=True)
class Point:
    """One option of one layer: its measured latency, its damage, and what it stands for."""

    ms: float
    damage: float
    key: Hashable = None


class OutOfReach(ValueError):
    """The budget is below the fastest mix (``floor_ms``: every layer at its fastest point)."""

    def __init__(self, budget: float, floor_ms: float) -> None:
        super().__init__(f"latency budget {budget:.4g} ms is below {floor_ms:.4g} ms, the predicted latency with "
                         "every layer at its fastest candidate")
        self.budget, self.floor_ms = budget, floor_ms


def front(points: Sequence[Point]) -> List[Point]:
    """The points no other beats on both latency and damage, slowest (least damage) first.

    A point must be strictly faster than every point of less or equal damage to stay, so the
    dense conv leads (damage 0) and a candidate slower than it is dropped.
    """
    kept: List[Point] = []
    for point in sorted(points, key=lambda p: (p.damage, p.ms)):
        if not kept or point.ms < kept[-1].ms:
            kept.append(point)
    return kept


Mix = Tuple[float, float, Tuple[int, ...]]  # (ms, damage, front index per layer)


def _pareto(mixes: List[Mix]) -> List[Mix]:
    """The mixes no other beats on both latency and damage, fastest first."""
    kept: List[Mix] = []
    for mix in sorted(mixes, key=lambda m: (m[0], m[1])):
        if not kept or mix[1] < kept[-1][1] - _EPS:
            kept.append(mix)
    return kept


def mixes(fronts: Mapping[str, Sequence[Point]], fixed: float = 0.0, budget: float = float("inf")) -> List[Mix]:
    """Every whole-model mix on the exact front, fastest first: ``(ms, damage, indices)`` with
    ``indices`` in the order of ``fronts``; only mixes within ``budget`` when given."""
    paths = list(fronts)
    floors = [sum(fronts[p][-1].ms for p in paths[i + 1:]) for i in range(len(paths))]
    states: List[Mix] = [(fixed, 0.0, ())]
    for i, path in enumerate(paths):
        grown = [(ms + point.ms, damage + point.damage, (*picks, j))
                 for ms, damage, picks in states for j, point in enumerate(fronts[path])
                 if ms + point.ms + floors[i] <= budget + _EPS]
        states = _pareto(grown)
    return states


def allocate(fronts: Mapping[str, Sequence[Point]], budget: float, fixed: float = 0.0) -> Dict[str, int]:
    """Per layer, the index of the :func:`front` point to take so that ``fixed + sum(ms) <=
    budget`` with the least total damage (exact; ties go to the faster mix).

    ``fixed``: the part of the model's latency outside these layers. Raises
    :class:`OutOfReach` when even every layer's fastest point does not fit.
    """
    floor = fixed + sum(points[-1].ms for points in fronts.values())
    if floor > budget + _EPS:
        raise OutOfReach(budget, floor)
    best = min(mixes(fronts, fixed, budget), key=lambda m: (m[1], m[0]))
    return dict(zip(fronts, best[2]))


def whole_front(fronts: Mapping[str, Sequence[Point]], fixed: float = 0.0) -> List[Tuple[float, float]]:
    """The whole-model front ``[(ms, damage)]``, fastest first: the least damage at each latency."""
    return [(ms, damage) for ms, damage, _ in mixes(fronts, fixed)]


MIN_SLOPE, MAX_SLOPE = 0.2, 5.0
"""The whole model's measured ms per predicted layer ms that :func:`layer_share` believes: a
line between two measurements steeper or flatter than this is noise, not a trend."""


def layer_share(attempts: Sequence[Tuple[float, float]], budget: float) -> Optional[float]:
    """The layers' predicted ms at which the whole model should measure ``budget``, from
    ``attempts`` (each: the layers' predicted ms, the whole model's measured ms), or None.

    Measured ms rise with the layers' predicted ms, but not always one for one (a runtime can
    pay per layer for layout changes that a mix of faster layers has more of), so the step is
    a secant: on the line through the slowest-predicted attempt that met the budget and the
    fastest-predicted one above it that did not, kept inside that bracket; without one, on the
    line through the last two attempts. None when the line is not a believable trend
    (:data:`MIN_SLOPE`, :data:`MAX_SLOPE`) or there are fewer than two attempts.
    """
    met = [a for a in attempts if a[1] <= budget]
    over = [a for a in attempts if a[1] > budget]
    if met and over:
        low = max(met)
        high = min((a for a in over if a[0] > low[0]), default=None)
        if high is not None:
            share = _on_line(low, high, budget)
            if share is not None:
                margin = 0.1 * (high[0] - low[0])
                return min(max(share, low[0] + margin), high[0] - margin)
    return _on_line(attempts[-2], attempts[-1], budget) if len(attempts) >= 2 else None


def _on_line(a: Tuple[float, float], b: Tuple[float, float], budget: float) -> Optional[float]:
    """Where the line through ``a`` and ``b`` reaches ``budget`` (None: not a believable trend)."""
    if a[0] == b[0]:
        return None
    slope = (b[1] - a[1]) / (b[0] - a[0])
    if not MIN_SLOPE <= slope <= MAX_SLOPE:
        return None
    return max(a[0] + (budget - a[1]) / slope, 0.0)


__all__ = ["MAX_SLOPE", "MIN_SLOPE", "Mix", "OutOfReach", "Point", "allocate", "front", "layer_share", "mixes",
           "whole_front"]
