"""Rank selection: per-layer ranks that meet a global MAC budget with the least damage.

Every convertible layer has a ladder of choices: dense, then the target kind at decreasing
ranks. Each step down a ladder saves MACs and discards energy (the squared weight error,
relative to the layer's own energy, from the exact factorization). Greedy allocation: start
all layers dense and repeatedly take the step with the least discarded energy per MAC saved
until the model's convertible MACs fit the budget.
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


def ladder(conv: nn.Conv2d, target: str, in_hw: Tuple[int, int], extra: Optional[Dict] = None,
           inputs: Optional[Sequence[torch.Tensor]] = None) -> List[Choice]:
    """Dense, then every rank of ``target`` that saves MACs, in decreasing MAC order.

    A rung's damage is the relative discarded weight energy, or, when ``inputs`` (this
    layer's inputs on calibration data) are given, the squared relative error of the layer's
    output on them, which weighs the kernel's directions by how the data excites them.
    """
    from leanconv.convert.surgery import _full_rank, _options_for, _spec, build_module, factorize_conv

    with torch.no_grad():
        reference = [conv(x) for x in inputs] if inputs else None
        scale = sum(float(y.double().pow(2).sum()) for y in reference) if reference else 0.0

    dense = Choice(None, get_kind("dense").macs(_spec(conv), in_hw), 0.0)
    rungs = [dense]
    full = _full_rank(target, conv, extra)
    top = next(v for v in full.values() if not isinstance(v, str))
    top = top if isinstance(top, int) else min(conv.in_channels, conv.out_channels)
    for rank in range(top, 0, -1):
        options = _options_for(target, conv, rank, extra)
        macs = get_kind(target).macs(_spec(conv, **options), in_hw)
        if macs >= rungs[-1].macs:
            continue
        result = factorize_conv(conv, target, options)
        damage = result.discarded_energy / max(result.total_energy, 1e-30)
        if reference:
            module = build_module(conv, target, options, result.weights).eval()
            with torch.no_grad():
                error = sum(float((module(x) - y).double().pow(2).sum()) for x, y in zip(inputs, reference))
            damage = error / max(scale, 1e-30)
        rungs.append(Choice(options, macs, damage))
    return rungs


def allocate(ladders: Dict[str, List[Choice]], mac_budget: int, fixed_macs: int = 0) -> Dict[str, Choice]:
    """Greedy choice per layer so that ``fixed_macs + sum(chosen MACs) <= mac_budget``.

    Raises ``ValueError`` when even the lowest rank everywhere does not fit.
    """
    position = {path: 0 for path in ladders}
    total = fixed_macs + sum(rungs[0].macs for rungs in ladders.values())
    floor = fixed_macs + sum(rungs[-1].macs for rungs in ladders.values())
    if floor > mac_budget:
        raise ValueError(f"mac_budget={mac_budget:,} is below {floor:,}, the MACs at the lowest rank of every "
                         "convertible layer (plus the layers that cannot be converted)")
    while total > mac_budget:
        best, best_cost = None, float("inf")
        for path, rungs in ladders.items():
            i = position[path]
            if i + 1 >= len(rungs):
                continue
            saved = rungs[i].macs - rungs[i + 1].macs
            cost = (rungs[i + 1].discarded - rungs[i].discarded) / saved
            if cost < best_cost:
                best, best_cost = path, cost
        position[best] += 1  # type: ignore[index]
        rungs = ladders[best]  # type: ignore[index]
        total -= rungs[position[best] - 1].macs - rungs[position[best]].macs  # type: ignore[index]
    return {path: ladders[path][i] for path, i in position.items()}


__all__ = ["Choice", "allocate", "ladder"]
