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
from typing import Dict, Hashable, List, Mapping, Sequence, Tuple

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


__all__ = ["Mix", "OutOfReach", "Point", "allocate", "front", "mixes", "whole_front"]
