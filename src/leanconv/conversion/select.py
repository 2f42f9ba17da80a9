"""Rank selection: which options each convertible layer gets, by one of four rank modes.

- ``rank``: the same rank everywhere (None: the kind's default, or its exact full rank);
- ``energy``: per layer, the smallest rank keeping that share of the kernel's energy;
- ``mac_budget``: a global MAC count, met with the least damage;
- ``latency_budget``: a global measured latency in ms, met with the least damage.

For the budgets every layer has a ladder of :class:`Choice` rungs: dense, then the kind at
decreasing ranks, each saving MACs and discarding energy (the relative squared weight error of
the exact factorization, or the relative squared output error on calibration inputs). Greedy
allocation starts all layers dense and repeatedly takes the step with the least damage per MAC
(or per measured millisecond) saved until the model fits. For a latency budget each rung is
timed on the current device (:mod:`leanconv.conversion.latency`) and a ladder keeps only rungs
faster than every rung above them: a layer whose efficient form is slower stays dense.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv._modes import evaluating
from leanconv._validate import check_choice
from leanconv.analysis.profiling import profile
from leanconv.conversion.factorize import reuse_decompositions
from leanconv.conversion.latency import LatencyCache, describe
from leanconv.conversion.refitting import layer_inputs
from leanconv.conversion.surgery import build_module, conv_spec, factorize_conv, min_hw, source_macs
from leanconv.kinds import Conversion, ConvKind, Options, Rank, convertible_kinds, get_kind

Variant = Dict[str, object]


@dataclass
class Choice:
    """One rung of a layer's ladder."""

    options: Optional[Dict]  # None: stay dense
    macs: int
    discarded: float  # relative discarded energy, or relative squared output error (0 for dense)
    latency_ms: Optional[float] = None  # measured, for a latency budget


@dataclass(frozen=True)
class RankRequest:
    """The rank mode of a conversion: at most one of the four is set (none: the kind's default)."""

    rank: Optional[Rank] = None
    energy: Optional[float] = None
    mac_budget: Optional[int] = None
    latency_budget: Optional[float] = None

    @property
    def budget(self) -> Optional[float]:
        return self.mac_budget if self.mac_budget is not None else self.latency_budget

    @property
    def cost(self) -> str:
        """The :class:`Choice` field a budget is in."""
        return "macs" if self.mac_budget is not None else "latency_ms"

    def check(self, kind: ConvKind, input_size: Optional[Sequence[int]]) -> None:
        """One clear ValueError for a request the kind or the arguments cannot meet."""
        if sum(x is not None for x in (self.rank, self.energy, self.mac_budget, self.latency_budget)) > 1:
            raise ValueError("pass at most one of rank, energy, mac_budget and latency_budget")
        for name, value in (("energy", self.energy), ("mac_budget", self.mac_budget),
                            ("latency_budget", self.latency_budget)):
            if value is not None and not _finite_number(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
        if self.latency_budget is not None and not self.latency_budget > 0:
            raise ValueError(f"latency_budget={self.latency_budget!r} must be a positive number of milliseconds")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy={self.energy!r} must be in (0, 1]")
        conversion = _conversion(kind)
        if self.rank is not None:
            _check_rank(self.rank, conversion)
        if not conversion.ladder and (self.energy is not None or self.budget is not None):
            raise ValueError(f"to={kind.name!r} takes rank=<{conversion.rank_option}>, not energy, mac_budget "
                             "or latency_budget")
        if self.budget is not None and input_size is None:
            raise ValueError(f"{'mac' if self.mac_budget is not None else 'latency'}_budget needs input_size (N, C, H, W)")


def _finite_number(value: object) -> bool:
    """A real number (not a bool, not a string), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_rank(rank: object, conversion: Conversion) -> None:
    """A rank is an int >= 1, or, where the kind takes one (Tucker-2), a pair of them."""
    def whole(r: object) -> bool:
        return isinstance(r, int) and not isinstance(r, bool) and r >= 1

    if whole(rank):
        return
    if conversion.pair_rank and isinstance(rank, (tuple, list)) and len(rank) == 2 and all(map(whole, rank)):
        return
    rule = "an int >= 1" + (" or a pair (r1, r2) of them" if conversion.pair_rank else "")
    raise ValueError(f"rank={rank!r} must be {rule} (the {conversion.rank_option})")


@dataclass
class LayerChoice:
    """What selection decided for one layer: options, or None and the reason it stays dense."""

    options: Optional[Options]
    reason: str = ""
    latency_before_ms: Optional[float] = None
    latency_after_ms: Optional[float] = None


@dataclass
class Selection:
    """Every layer's choice; under a latency budget also the measured whole model and the part of
    it outside the convertible layers (what per-layer timings cannot see)."""

    layers: Dict[str, LayerChoice] = field(default_factory=dict)
    model_ms: Optional[float] = None
    fixed_ms: Optional[float] = None


def _conversion(kind: ConvKind) -> Conversion:
    if kind.conversion is None:
        raise ValueError(f"to={kind.name!r} must be one of {convertible_kinds()}")
    return kind.conversion


def check_variant(kind: ConvKind, **asked: object) -> Optional[Variant]:
    """The options besides the rank that the caller fixed (None where not given), each checked
    against the kinds whose conversion allows it; ``order='auto'`` asks for every stage order."""
    variant: Variant = {}
    for name, value in asked.items():
        if value is None or value is False:
            continue
        allowed = [k for k in convertible_kinds() if name in get_kind(k).conversion.variants]  # type: ignore[union-attr]
        if kind.name not in allowed:
            raise ValueError(f"{name}={value!r} applies only to " + " or ".join(f"to={k!r}" for k in allowed))
        choices = tuple(_conversion(kind).variants[name])
        check_choice(value, name, (*choices, "auto") if name == "order" else choices)
        variant[name] = value
    return variant or None


def variants(kind: ConvKind, extra: Optional[Mapping[str, object]]) -> List[Optional[Variant]]:
    """``[extra]``, or one copy per stage order of the kind when ``extra`` asks for ``order='auto'``."""
    if (extra or {}).get("order") != "auto":
        return [dict(extra) if extra else None]
    return [{**(extra or {}), "order": order} for order in _conversion(kind).orders]


def _relative_discard(conv: nn.Conv2d, kind: str, options: Options) -> float:
    result = factorize_conv(conv, kind, options)
    return result.discarded_energy / max(result.total_energy, 1e-30)


def energy_options(conv: nn.Conv2d, kind: ConvKind, energy: float, variant: Optional[Variant]) -> Options:
    """Smallest rank keeping at least ``energy`` of the kernel's squared Frobenius norm.

    A bisection over the ranks: the kept energy of a truncated decomposition never falls as
    the rank grows (each rank's factors extend the previous ones), so about log2(top rank)
    factorizations are read instead of one per rank.
    """
    spec = conv_spec(conv)

    def enough(r: int) -> bool:
        result = factorize_conv(conv, kind.name, kind.conversion_options(spec, r, variant))
        return result.total_energy == 0 or 1 - result.discarded_energy / result.total_energy >= energy - 1e-12

    low, high = 1, kind.top_rank(spec, variant)
    if not enough(high):
        return kind.conversion_options(spec, None, variant)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    return kind.conversion_options(spec, low, variant)


def cheapest_damage(conv: nn.Conv2d, kind: ConvKind, candidates: List[Options], hw: Tuple[int, int]) -> Options:
    """The candidate with the least discarded energy per MAC saved (first one if none saves MACs)."""
    if len(candidates) == 1:
        return candidates[0]
    dense = source_macs(conv, hw)
    best, best_price = candidates[0], float("inf")
    for options in candidates:
        saved = dense - kind.macs(conv_spec(conv, **options), hw)
        if saved > 0:
            price = factorize_conv(conv, kind.name, options).discarded_energy / saved
            if price < best_price:
                best, best_price = options, price
    return best


def layer_options(conv: nn.Conv2d, kind: ConvKind, request: RankRequest, extra: Optional[Variant],
                  hw: Tuple[int, int]) -> Options:
    """One layer's options by ``rank`` or ``energy`` (both stage orders tried for ``order='auto'``)."""
    candidates = [energy_options(conv, kind, request.energy, variant) if request.energy is not None
                  else kind.conversion_options(conv_spec(conv), request.rank, variant)
                  for variant in variants(kind, extra)]
    return cheapest_damage(conv, kind, candidates, hw)


def ladder(conv: nn.Conv2d, target: str, in_hw: Tuple[int, int], extra: Optional[Mapping[str, object]] = None,
           inputs: Optional[Sequence[torch.Tensor]] = None) -> List[Choice]:
    """Dense, then every rank of ``target`` that saves MACs, in decreasing MAC order (a Pareto front).

    A rung's damage is the relative discarded weight energy, or, when ``inputs`` (this
    layer's inputs on calibration data) are given, the squared relative error of the layer's
    output on them, which weighs the kernel's directions by how the data excites them.
    """
    kind, spec = get_kind(target), conv_spec(conv)
    with torch.no_grad():
        reference = [conv(x) for x in inputs] if inputs else None
    dense = Choice(None, source_macs(conv, in_hw), 0.0)
    candidates: List[Choice] = []
    for variant in variants(kind, extra):
        for rank in range(kind.top_rank(spec, variant), 0, -1):
            options = kind.conversion_options(spec, rank, variant)
            macs = kind.macs(conv_spec(conv, **options), in_hw)
            if macs < dense.macs:
                candidates.append(Choice(options, macs, _damage(conv, target, options, inputs, reference)))
    return [dense, *pareto(candidates)]


def _damage(conv: nn.Conv2d, kind: str, options: Options, inputs, reference) -> float:
    """Relative discarded energy, or relative squared output error on the calibration inputs."""
    result = factorize_conv(conv, kind, options)
    if not reference:
        return result.discarded_energy / max(result.total_energy, 1e-30)
    module = build_module(conv, kind, options, result).eval()
    scale = sum(float(y.double().pow(2).sum()) for y in reference)
    with torch.no_grad():
        error = sum(float((module(x) - y).double().pow(2).sum()) for x, y in zip(inputs, reference))
    return error / max(scale, 1e-30)


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
    check_choice(cost, "cost", ("macs", "latency_ms"))

    def of(choice: Choice) -> float:
        return getattr(choice, cost)

    position = {path: 0 for path in ladders}
    total = fixed + sum(of(rungs[0]) for rungs in ladders.values())
    floor = fixed + sum(of(rungs[-1]) for rungs in ladders.values())
    if floor > budget:
        name, unit = ("mac_budget", "MACs") if cost == "macs" else ("latency_budget", "ms (measured)")
        raise ValueError(f"{name}={budget:,} is below {floor:,.6g} {unit}, the cost at the lowest rank of every "
                         "convertible layer (plus the layers that cannot be converted)")
    while total > budget:
        best = min((path for path in ladders if position[path] + 1 < len(ladders[path])),
                   key=lambda path: _step_price(ladders[path], position[path], of))
        position[best] += 1
        rungs = ladders[best]
        total -= of(rungs[position[best] - 1]) - of(rungs[position[best]])
    return {path: ladders[path][i] for path, i in position.items()}


def _step_price(rungs: List[Choice], i: int, of) -> float:
    """Extra damage per unit of cost saved by one step down from rung ``i``."""
    return (rungs[i + 1].discarded - rungs[i].discarded) / (of(rungs[i]) - of(rungs[i + 1]))


def choose(original: nn.Module, eligible: List[Tuple[str, nn.Conv2d]], target: str, extra: Optional[Variant],
           request: RankRequest, input_size: Optional[Sequence[int]], sizes: Mapping[str, Tuple[int, int]],
           calib: Optional[List[torch.Tensor]] = None, cache: Optional[LatencyCache] = None) -> Selection:
    """Every eligible layer's options under ``request``. ``original`` is the unconverted model
    (for calibration inputs and the whole-model timing); ``sizes`` each layer's input size. A
    layer the kind does not apply to, or (under a budget) one the forward never runs, stays as
    it is with the reason."""
    with reuse_decompositions():  # every rank of a layer reads one decomposition of its kernel
        return _choose(original, eligible, target, extra, request, input_size, sizes, calib, cache)


def _choose(original, eligible, target, extra, request, input_size, sizes, calib, cache) -> Selection:
    kind = get_kind(target)
    kept = _kept_as_they_are(kind, eligible, sizes if request.budget is not None else None)
    eligible = [(path, conv) for path, conv in eligible if path not in kept]
    if request.budget is None:
        selection = Selection({path: LayerChoice(layer_options(conv, kind, request, extra,
                                                               sizes.get(path, min_hw(conv))))
                               for path, conv in eligible})
    else:
        selection = _budget_selection(original, eligible, target, extra, request, input_size, sizes, calib, cache)
    selection.layers.update(kept)
    return selection


def _kept_as_they_are(kind: ConvKind, eligible: List[Tuple[str, nn.Conv2d]],
                      sizes: Optional[Mapping[str, Tuple[int, int]]]) -> Dict[str, LayerChoice]:
    """The layers that stay, with the reason: the kind does not apply to them (its conversion's
    ``applies``), or the forward never runs them at ``input_size`` (when ``sizes`` is given)."""
    kept: Dict[str, LayerChoice] = {}
    applies = _conversion(kind).applies
    for path, conv in eligible:
        why = applies(conv_spec(conv)) if applies is not None else None
        if why is None and sizes is not None and path not in sizes:
            why = "not run by the model's forward at input_size"
        if why is not None:
            kept[path] = LayerChoice(None, f"kept as it is: {why}")
    return kept


def _budget_selection(original, eligible, target, extra, request, input_size, sizes, calib, cache) -> Selection:
    inputs = layer_inputs(original, [path for path, _ in eligible], calib[:2] if calib else None)  # two batches
    ladders = {path: ladder(conv, target, sizes[path], extra, inputs.get(path)) for path, conv in eligible}
    if request.mac_budget is not None:
        fixed = profile(original, tuple(input_size)).total_macs - sum(r[0].macs for r in ladders.values())
        return _selection(allocate(ladders, request.mac_budget, fixed), ladders, "kept dense by the MAC budget")
    return _latency_selection(original, eligible, target, ladders, request.latency_budget, input_size,
                              sizes, cache or LatencyCache())


def _latency_selection(original, eligible, target, ladders, budget, input_size, sizes, cache) -> Selection:
    batch = input_size[0]
    ladders = {path: latency_ladder(conv, target, ladders[path], (batch, conv.in_channels, *sizes[path]), cache)
               for path, conv in eligible}
    cache.save()
    model_ms = _model_latency(original, input_size, cache)
    fixed_ms = max(model_ms - sum(rungs[0].latency_ms for rungs in ladders.values()), 0.0)
    chosen = allocate(ladders, budget, fixed_ms, cost="latency_ms")
    selection = _selection(chosen, ladders, "kept dense by the latency budget", target)
    selection.model_ms, selection.fixed_ms = model_ms, fixed_ms
    return selection


def _model_latency(model: nn.Module, input_size: Sequence[int], cache: LatencyCache) -> float:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with evaluating(model), torch.no_grad():
        return float(cache.measure(model, torch.randn(tuple(input_size), device=device)))


def _selection(chosen: Dict[str, Choice], ladders: Dict[str, List[Choice]], budget_reason: str,
               timed_kind: Optional[str] = None) -> Selection:
    """The chosen rungs as layer choices, with the reason a layer stays dense and its timings."""
    selection = Selection()
    for path, choice in chosen.items():
        rungs = ladders[path]
        before = rungs[0].latency_ms
        if choice.options is not None:
            selection.layers[path] = LayerChoice(choice.options, "", before, choice.latency_ms)
            continue
        reason = budget_reason
        if timed_kind is not None and len(rungs) == 1:
            reason = (f"kept dense: no rank of {timed_kind} measured faster than the dense conv ({before:.3f} ms) "
                      "on this device")
        selection.layers[path] = LayerChoice(None, reason, before, before)
    return selection


__all__ = ["Choice", "LayerChoice", "RankRequest", "Selection", "allocate", "check_variant", "cheapest_damage",
           "choose", "energy_options", "ladder", "latency_ladder", "layer_options", "pareto", "thin", "variants"]
