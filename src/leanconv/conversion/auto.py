"""``convert(to='auto')``: each layer's kind and rank chosen by latency measured on a deployment target.

No one kind is fastest everywhere: which one pays depends on the layer's shape, the batch and
the runtime (see DESIGN.md, "Performance methodology"). The search:

1. measures the dense model on the target in each precision it runs here (or the one asked
   for); the fastest is the honest baseline, and the request (``target_speedup`` against it, or
   ``latency_budget`` in ms) becomes a budget;
2. per layer, takes every candidate of the kind registry (:mod:`~leanconv.conversion.candidates`)
   that the target computes correctly, and times it alone on the target in each precision, at
   the layer's real input shape (fresh weights: a timing does not depend on them; cached on
   disk: :mod:`~leanconv.conversion.latency`, less the runtime's per-call cost);
3. fits once each candidate that is faster than dense in some precision (optimal factorization,
   least-squares refit on the layer's calibration inputs, error on held-out images; errors kept
   on disk: :mod:`~leanconv.conversion.fit_cache`) and, per precision, allocates
   (:mod:`~leanconv.conversion.allocation`: the exact least-error mix, a multiple-choice
   knapsack solved over Pareto sets) so the predicted latency meets the budget;
4. measures the whole converted model on the target (cached under its architecture). Per-layer
   timings miss what a runtime does across layers (fusions, layout changes), so the gap between
   measured and predicted is added to the part outside the layers and the allocation is redone
   (a slower mix leaves less room, a faster one room for less error) until the choice repeats.
   The least-error mix that met the budget is kept, else the least-error one within
   :data:`NOISE` of the fastest, reported with its gap. When several mixes compete so, each is
   scored whole (its fitted model's output error on calibration images the search did not fit
   on, :data:`SCORE_IMAGES`): layer errors compound through the layers, so their sum can rank
   two mixes the wrong way round;
5. keeps the precision whose mix met the request with the least error (else the fastest; scored
   whole as in 4 when they differ), once its fitted model, deployed as users deploy it, computes
   what it does in fp32 within the precision's tolerance; the others are in the report.

Clocks (:class:`Clock`) hide where the numbers come from: :class:`TargetClock` deploys and
times; tests script them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import torch
from torch import nn

from leanconv.conversion.allocation import OutOfReach, Point, allocate, front, layer_share, whole_front
from leanconv.conversion.candidates import Candidate, CandidateFit, fit_candidate, layer_candidates, layer_targets
from leanconv.conversion.fit_cache import FitCache, data_key, fit_key, score_key
from leanconv.conversion.refitting import layer_inputs, relative_error
from leanconv.conversion.surgery import build_module, set_module

MAX_ATTEMPTS = 4
"""Whole-model measurements the correction loop may take before it reports the closest point."""
REFINE_ATTEMPTS = 3
"""More whole-model measurements when the loop missed the budget but a kind alone at its
fastest met it: mixes between the two, for less error than that uniform one."""
SEARCH_IMAGES = 32
SEARCH_PIXELS = 16384
MIN_SEARCH_IMAGES = 8
"""Calibration images each candidate is fitted and scored on: per layer, enough images for about
``SEARCH_PIXELS`` input pixels (at least ``MIN_SEARCH_IMAGES``, at most ``SEARCH_IMAGES``).
A least-squares stage has at most a few thousand weights per output, so that ranks candidates
well, and keeps ~20 fits per layer to seconds (the converted model's final refit uses every
calibration image)."""
FIT_HOLDOUT = 0.25
"""Share of a layer's search images held out to score each candidate's refit."""
FLOOR_SLACK = 1.5
"""A precision is measured whole only if its predicted floor (every layer at its fastest) is
within this factor of the budget, when another precision's floor meets the budget. Per-layer
timings carry each layer's own layout changes and conversions at its ends, so a prediction can
overshoot the whole model by a third on small, wide layers; more than that, it does not."""
NOISE = 0.03
"""Whole-model measurements this close (relative) are one speed on a shared machine: among
them, the mix of least error is returned when none met the budget."""
SCORE_IMAGES = 32
"""Calibration images, after the first :data:`SEARCH_IMAGES` (those the candidates are fitted
and scored on), on which competing mixes are scored whole. With none left, they are compared by
their summed layer errors."""


class Clock(Protocol):
    """Where the search's latencies come from (ms)."""

    precision: Optional[str]

    def precisions(self) -> List[str]:
        """The precisions to search (the one asked for, or every one the target runs here)."""

    def baseline(self, model: nn.Module) -> Dict[str, float]:
        """The dense model's ms in each precision of :meth:`precisions` whose output is correct."""

    def layer_ms(self, conv: nn.Conv2d, candidate: Candidate, module: nn.Module,
                 input_shape: Tuple[int, ...]) -> float:
        """One layer's candidate alone at ``input_shape`` in :attr:`precision`."""

    def model_ms(self, model: nn.Module) -> float:
        """A whole model in :attr:`precision` (its weights do not matter: only its architecture)."""


@dataclass
class Measured:
    """One candidate of one layer: what it is, its measured latency and its fitted error."""

    candidate: Candidate
    latency_ms: float
    fit: Optional[CandidateFit]
    """None: not fitted, as slower than dense in every precision searched (it cannot be chosen)."""

    @property
    def error(self) -> float:
        """Relative output error on held-out calibration images (0 for dense, inf when not fitted)."""
        if self.candidate.dense:
            return 0.0
        return math.inf if self.fit is None else self.fit.error

    @property
    def error_text(self) -> str:
        return "not fitted: slower than dense" if self.fit is None and not self.candidate.dense else f"{self.error:.4f}"

    @property
    def damage(self) -> float:
        return self.error ** 2


@dataclass
class LayerSearch:
    """One layer: every candidate considered, its front (no other candidate both faster and of
    less error), the choice and why."""

    path: str
    input_shape: Tuple[int, ...]
    considered: List[Measured]
    front: List[Measured]
    chosen: Optional[Measured] = None
    reason: str = ""

    @property
    def dense(self) -> Measured:
        return self.considered[0]


@dataclass
class Attempt:
    """One round of the correction loop."""

    budget_ms: float
    predicted_ms: float
    measured_ms: float
    fixed_ms: float
    damage: float = 0.0  # sum of the chosen layers' squared relative output errors
    choice: Dict[str, str] = field(default_factory=dict)  # path -> candidate label
    error: Optional[float] = None  # the whole fitted model's relative output error, when scored (:data:`SCORE_IMAGES`)

    def mix_text(self) -> str:
        """The mix in a few words: each candidate with how many layers took it (``'dsconv m=1 x2, dense x1'``)."""
        counts: Dict[str, int] = {}
        for label in self.choice.values():
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{label} x{count}" for label, count in sorted(counts.items()))


@dataclass
class SearchReport:
    """What the search measured, chose and reached (part of :class:`ConversionResult`)."""

    target: str
    precision: str
    input_size: Tuple[int, ...]
    request: str
    baseline_ms: float
    baseline_precision: str
    budget_ms: float
    layers: Dict[str, LayerSearch]
    attempts: List[Attempt]
    met: bool
    fronts: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    alternatives: Dict[str, str] = field(default_factory=dict)  # other precisions searched -> outcome
    deployment: str = ""  # why the returned mix does not deploy correctly ("" : it does, or was not checked)
    excluded: Dict[str, str] = field(default_factory=dict)  # candidates not offered on the target -> why

    def outcome(self) -> str:
        """One line: met or not, the speedup reached and the error, in this precision."""
        state = "met" if self.met else "not met"
        final = self.final
        whole = "" if final.error is None else f", whole-model error {final.error:.3f}"
        return (f"{state}: {final.measured_ms:.3f} ms measured = {self.speedup:.2f}x, combined error "
                f"{final.damage ** 0.5:.3f}{whole}")

    def contenders(self) -> List[Attempt]:
        """The attempts the returned one is chosen from: those that met the budget, else those
        within :data:`NOISE` of the fastest."""
        met = [a for a in self.attempts if a.measured_ms <= self.budget_ms]
        return met or _near_fastest(self.attempts, lambda a: a.measured_ms)

    @property
    def final(self) -> Attempt:
        """The attempt whose model was returned: the contender of least error (whole-model when
        they were scored whole, else summed layer errors; ties: the faster)."""
        return _least_error(self.contenders(), lambda a: a)

    @property
    def speedup(self) -> float:
        """Measured: the dense model at its best on the target over the returned mix."""
        return self.baseline_ms / self.final.measured_ms

    @property
    def fastest_speedup(self) -> float:
        return self.baseline_ms / min(a.measured_ms for a in self.attempts)

    def headline(self) -> str:
        """The first line of every output: whether the request was met, with the numbers."""
        where = f"on {self.target} {self.precision}, input {tuple(self.input_size)}"
        reached = (f"measured {self.final.measured_ms:.3f} ms = {self.speedup:.2f}x the dense model at its best "
                   f"({self.baseline_ms:.3f} ms, {self.target} {self.baseline_precision})")
        if self.deployment:
            reached += f"; WARNING: {self.deployment}"
        if self.met:
            return f"request met ({self.request}) {where}: {reached}"
        return (f"REQUEST NOT MET ({self.request}) {where}: the fastest mix found reaches {self.fastest_speedup:.2f}x; "
                f"returned: {reached}, {self.final.measured_ms - self.budget_ms:.3f} ms over the budget")

    def to_markdown(self, headline: bool = True) -> str:
        """Per layer the choice and why, the correction loop's attempts, every candidate considered."""
        lines = [f"**{self.headline()}**", ""] if headline else []
        lines += ["| layer | chosen | latency ms (dense -> chosen) | output error | why |", "|---|---|---:|---:|---|"]
        for path, layer in self.layers.items():
            chosen = layer.chosen or layer.dense
            lines.append(f"| {path} | {chosen.candidate.label} | {layer.dense.latency_ms:.4f} -> "
                         f"{chosen.latency_ms:.4f} | {chosen.error:.4f} | {layer.reason} |")
        if self.alternatives:
            lines += ["", f"Chosen: {self.precision} ({self.outcome()}). Other precisions searched on {self.target}:"]
            lines += [f"- {precision}: {text}" for precision, text in self.alternatives.items()]
        if self.excluded:
            lines += ["", f"Not offered on {self.target} (computed wrongly there):"]
            lines += [f"- {label}: {why}" for label, why in sorted(self.excluded.items())]
        lines += ["", "| attempt | mix | budget ms | predicted ms | measured ms | combined layer error | "
                  "whole-model error |", "|---:|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {i} | {a.mix_text()} | {a.budget_ms:.3f} | {a.predicted_ms:.3f} | {a.measured_ms:.3f} | "
                  f"{a.damage ** 0.5:.4f} | {'' if a.error is None else f'{a.error:.4f}'} |"
                  for i, a in enumerate(self.attempts, 1)]
        lines += ["", "Candidates considered (measured alone on the target; error: relative output error on "
                  "held-out calibration images after the least-squares refit):", ""]
        lines += ["| layer | candidate | MACs | latency ms | output error | on the front |", "|---|---|---:|---:|---:|---|"]
        for path, layer in self.layers.items():
            on_front = {id(m) for m in layer.front}
            lines += [f"| {path} | {m.candidate.label} | {m.candidate.macs:,} | {m.latency_ms:.4f} | {m.error_text} | "
                      f"{'yes' if id(m) in on_front else ''} |" for m in layer.considered]
        return "\n".join(lines) + "\n"


@dataclass
class SearchResult:
    model: nn.Module
    chosen: Dict[str, Measured]  # converted layers only
    modules: Dict[str, nn.Module]
    report: SearchReport


def budget_of(baseline_ms: float, target_speedup: Optional[float], latency_budget: Optional[float]) -> float:
    return latency_budget if latency_budget is not None else baseline_ms / target_speedup  # type: ignore[operator]


def search(original: nn.Module, eligible: Sequence[Tuple[str, nn.Conv2d]], input_size: Sequence[int],
           sizes: Mapping[str, Tuple[int, int]], clock: Clock, *, target: str,
           target_speedup: Optional[float] = None, latency_budget: Optional[float] = None,
           calib: Optional[List[torch.Tensor]] = None, kinds: Optional[Sequence[str]] = None,
           progress: Optional[Callable[[str], None]] = None, fit_cache: Optional[FitCache] = None) -> SearchResult:
    """The mix of per-layer candidates with the least damage whose measured latency meets the
    request (or the closest one, ``report.met`` False), in whichever of the clock's precisions
    does that best. ``original`` is not changed; the result's model is a copy with the chosen
    modules in place. ``fit_cache``: where candidates' errors are kept between searches (None:
    fitted every time)."""
    say = progress or (lambda _: None)
    say(f"measuring the dense model on {target} ({', '.join(clock.precisions())})")
    dense = clock.baseline(original)
    baseline_precision = min(dense, key=lambda p: dense[p])
    budget = budget_of(dense[baseline_precision], target_speedup, latency_budget)
    request = f"target_speedup={target_speedup:g}" if target_speedup is not None else f"latency_budget={budget:g} ms"
    layers, excluded = _candidate_layers(original, eligible, input_size, sizes, calib, kinds, clock)
    scorer = _WholeScorer.on(original, layers, calib, fit_cache)
    order = sorted(dense, key=lambda p: dense[p])  # the dense model's best precision first
    timings = {precision: _time_layers(layers, clock, precision, say) for precision in order}
    _fit_layers(original, layers, _worth_fitting(layers, timings), calib, fit_cache, say)
    searched = {precision: _searched(layers, timings[precision]) for precision in order}
    fixed = {p: max(dense[p] - sum(layer.dense.latency_ms for layer in searched[p].values()), 0.0) for p in order}
    skipped = _out_of_reach(searched, fixed, budget)
    outcomes = []
    for precision in (p for p in order if p not in skipped):
        clock.precision = precision
        report = SearchReport(target, precision, tuple(input_size), request, dense[baseline_precision],
                              baseline_precision, budget, searched[precision], [], False,
                              fronts=_fronts(searched[precision], fixed[precision]), excluded=excluded)
        fallback = not any(earlier.met for earlier, _ in outcomes)  # else a uniform fastest mix cannot win
        outcomes.append((report, _correct(original, searched[precision], layers, report, clock, fixed[precision], say,
                                          scorer, fallback)))
    report, choice, model, refused = _deployable(original, outcomes, layers, clock, say, scorer)
    if fit_cache is not None:
        fit_cache.save()  # the scores
    report.alternatives = {r.precision: refused.get(r.precision) or r.outcome() for r, _ in outcomes if r is not report}
    report.alternatives.update(skipped)
    chosen = {p: m for p, m in choice.items() if not m.candidate.dense}
    return SearchResult(model, chosen, {p: layers[p].module(m.candidate) for p, m in chosen.items()}, report)


def _deployable(original, outcomes, layers: Mapping[str, "_Layer"], clock: Clock, say, scorer=None):
    """The best outcome (:func:`_best`) whose fitted model deploys correctly on the clock's target
    (``clock.deployment_problem``, where the clock has one), with that model and why the better
    ones were refused (precision -> reason); when none deploys correctly, the best, its problem
    in :attr:`SearchReport.deployment`."""
    refused: Dict[str, str] = {}
    remaining, first = list(outcomes), None
    while remaining:
        report, choice = _best(remaining, scorer)
        say(f"fitting the chosen candidates' weights ({report.precision})")
        model = _build(original, choice, layers, fitted=True)
        check = getattr(clock, "deployment_problem", None)
        clock.precision = report.precision
        problem = check(model) if check is not None else None
        first = first or (report, choice, model, problem)
        if problem is None:
            return report, choice, model, refused
        refused[report.precision] = f"{report.outcome()}; not kept: {problem}"
        remaining = [o for o in remaining if o[0] is not report]
    report, choice, model, problem = first
    report.deployment = problem or ""
    refused.pop(report.precision, None)
    return report, choice, model, refused


def _best(outcomes: List[Tuple[SearchReport, Dict[str, Measured]]], scorer: Optional["_WholeScorer"] = None
          ) -> Tuple[SearchReport, Dict[str, Measured]]:
    """The precision whose mix meets the budget with the least error (ties: the faster); when
    none does, of those whose mix measured within :data:`NOISE` of the fastest, the least error.
    Different mixes are scored whole by ``scorer`` (when there is one)."""
    met = [o for o in outcomes if o[0].met]
    pool = met or _near_fastest(outcomes, lambda o: o[0].final.measured_ms)
    _score_whole([(report.final, choice) for report, choice in pool], scorer)
    return _least_error(pool, lambda o: o[0].final)


def _least_error(items: Sequence, attempt_of: Callable[[object], Attempt]):
    """The item whose attempt has the least error: the whole-model error when every one was
    scored whole, else the summed layer errors (ties: the faster)."""
    whole = all(attempt_of(item).error is not None for item in items)
    return min(items, key=lambda item: (attempt_of(item).error if whole else attempt_of(item).damage,
                                        attempt_of(item).measured_ms))


def _score_whole(pairs: Sequence[Tuple[Attempt, Mapping[str, Measured]]], scorer: Optional["_WholeScorer"]) -> None:
    """Score each ``(attempt, its choice)`` whole, when ``scorer`` exists and their mixes differ
    (one mix needs no ranking)."""
    if scorer is None or not _mixes_differ(pairs):
        return
    for attempt, choice in pairs:
        if attempt.error is None:
            attempt.error = scorer(choice)


def _mixes_differ(pairs: Sequence[Tuple[Attempt, Mapping[str, Measured]]]) -> bool:
    """Whether the attempts hold more than one mix (only then is there anything to rank whole)."""
    return len({tuple(sorted(attempt.choice.items())) for attempt, _ in pairs}) > 1


def _near_fastest(items: Sequence, ms: Callable) -> List:
    """The ``items`` whose ``ms`` is within :data:`NOISE` of the least."""
    fastest = min(ms(item) for item in items)
    return [item for item in items if ms(item) <= fastest * (1 + NOISE)]


@dataclass
class _Layer:
    """One layer searched: its candidates, the inputs they are fitted on, their fits and the
    fitted modules (made when first needed: a fit read from the cache has no module yet)."""

    path: str
    conv: nn.Conv2d
    shape: Tuple[int, ...]
    candidates: List[Candidate]
    inputs: Optional[List[torch.Tensor]]
    fits: Dict[str, CandidateFit] = field(default_factory=dict)  # candidate label -> fit
    modules: Dict[str, nn.Module] = field(default_factory=dict)  # candidate label -> fitted module
    targets: Optional[List[torch.Tensor]] = None  # the dense conv's outputs on ``inputs``

    def skeleton(self, candidate: Candidate) -> nn.Module:
        """The candidate's architecture with fresh weights: all a timing needs."""
        if candidate.dense:
            return copy.deepcopy(self.conv)
        return build_module(self.conv, candidate.kind, candidate.options)

    def fit(self, candidate: Candidate) -> CandidateFit:
        """Fit ``candidate`` now: its module and error (the dense conv's outputs computed once per layer)."""
        if self.targets is None and self.inputs:
            self.targets = layer_targets(self.conv, self.inputs)
        module, fit = fit_candidate(self.conv, candidate, self.inputs, holdout=FIT_HOLDOUT, accumulate=torch.float32,
                                    targets=self.targets)
        self.modules[candidate.label], self.fits[candidate.label] = module, fit
        return fit

    def module(self, candidate: Candidate) -> nn.Module:
        """The candidate with its fitted weights (fitted now if only its error was known)."""
        if candidate.label not in self.modules:
            self.fit(candidate)
        return self.modules[candidate.label]


def _candidate_layers(original, eligible, input_size, sizes, calib, kinds, clock) -> Tuple[Dict[str, _Layer], Dict[str, str]]:
    """Every layer's candidates, with the layer's inputs on the first calibration images, less
    those the target computes wrongly (``clock.excludes``; -> why, per candidate label)."""
    inputs = layer_inputs(original, [p for p, _ in eligible], _first_images(calib, SEARCH_IMAGES))
    excludes = getattr(clock, "excludes", lambda candidate: None)
    layers, excluded = {}, {}
    for path, conv in eligible:
        offered = []
        for candidate in layer_candidates(conv, sizes[path], kinds):
            why = excludes(candidate)
            if why is None:
                offered.append(candidate)
            else:
                excluded[candidate.label] = why
        layers[path] = _Layer(path, conv, (int(input_size[0]), conv.in_channels, *sizes[path]), offered,
                              _enough(inputs.get(path), sizes[path]))
    return layers, excluded


def _time_layers(layers: Mapping[str, _Layer], clock: Clock, precision: str, say) -> Dict[str, List[float]]:
    """Every candidate's ms alone on the clock's target in ``precision``, per layer."""
    clock.precision = precision
    timed = {}
    for index, (path, layer) in enumerate(layers.items(), 1):
        say(f"timing layer {index}/{len(layers)} {path} at {layer.shape} in {precision}")
        timed[path] = [clock.layer_ms(layer.conv, c, layer.skeleton(c), layer.shape) for c in layer.candidates]
    return timed


def _worth_fitting(layers: Mapping[str, _Layer], timings: Mapping[str, Mapping[str, List[float]]]) -> Dict[str, List[int]]:
    """Per layer, the candidates faster than dense in some precision (the others can never be
    chosen: dense is both faster and exact)."""
    return {path: [i for i in range(1, len(layer.candidates))
                   if any(timed[path][i] < timed[path][0] for timed in timings.values())]
            for path, layer in layers.items()}


def _fit_layers(original, layers: Mapping[str, _Layer], wanted: Mapping[str, List[int]], calib,
                cache: Optional[FitCache], say) -> None:
    """Fit the ``wanted`` candidates of every layer, or read their errors from ``cache``."""
    data = data_key(original, _first_images(calib, SEARCH_IMAGES)) if cache is not None else ""
    for index, (path, layer) in enumerate(layers.items(), 1):
        say(f"layer {index}/{len(layers)} {path}: fitting {len(wanted[path])} candidates")
        images = sum(len(x) for x in layer.inputs or [])
        for candidate in (layer.candidates[i] for i in wanted[path]):
            key = fit_key(data, path, candidate, images=images, holdout=FIT_HOLDOUT, accumulate="float32")
            known = cache.known(key) if cache is not None else None
            if known is not None:
                layer.fits[candidate.label] = known
            elif cache is not None:
                cache.remember(key, layer.fit(candidate))
            else:
                layer.fit(candidate)
    if cache is not None:
        cache.save()


def _searched(layers: Mapping[str, _Layer], timed: Mapping[str, List[float]]) -> Dict[str, LayerSearch]:
    """Each layer's candidates with their ms in one precision and their fits, and its front."""
    searched = {}
    for path, layer in layers.items():
        considered = [Measured(c, ms, CandidateFit(0.0, 0.0, 0.0, False) if c.dense else layer.fits.get(c.label))
                      for c, ms in zip(layer.candidates, timed[path])]
        points = front([Point(m.latency_ms, m.damage, i) for i, m in enumerate(considered)])
        searched[path] = LayerSearch(path, layer.shape, considered, [considered[p.key] for p in points])
    return searched


def _out_of_reach(searched: Mapping[str, Mapping[str, LayerSearch]], fixed: Mapping[str, float],
                  budget: float) -> Dict[str, str]:
    """The precisions not worth measuring whole (-> why): when some precision's predicted floor
    (every layer at its fastest) meets the budget, those whose floor is over it by more than
    :data:`FLOOR_SLACK`."""
    floors = {p: fixed[p] + sum(min(m.latency_ms for m in layer.front) for layer in searched[p].values())
              for p in searched}
    if all(floor > budget for floor in floors.values()):
        return {}
    return {p: f"not measured whole: every layer at its fastest adds up to {floor:.3f} ms (predicted), over the "
               f"{budget:.3f} ms budget" for p, floor in floors.items() if floor > budget * FLOOR_SLACK}


def _first_images(calib: Optional[List[torch.Tensor]], count: int, skip: int = 0) -> Optional[List[torch.Tensor]]:
    """``count`` images of the calibration batches after the first ``skip`` (cut inside a batch
    where needed; fewer, or none, when the batches run out)."""
    if not calib:
        return calib
    taken, total = [], 0
    for batch in calib:
        if skip >= len(batch):
            skip -= len(batch)
            continue
        taken.append(batch[skip: skip + count - total])
        skip, total = 0, total + len(taken[-1])
        if total >= count:
            break
    return taken


def _enough(inputs: Optional[List[torch.Tensor]], hw: Tuple[int, int]) -> Optional[List[torch.Tensor]]:
    """The first images of a layer's inputs that hold about ``SEARCH_PIXELS`` pixels (see there)."""
    wanted = min(max(MIN_SEARCH_IMAGES, math.ceil(SEARCH_PIXELS / max(hw[0] * hw[1], 1))), SEARCH_IMAGES)
    return _first_images(inputs, wanted)


def _fronts_of(layers: Mapping[str, LayerSearch], kind: Optional[str] = None) -> Dict[str, List[Point]]:
    """Each layer's front as points (of dense and one ``kind`` alone when given)."""
    fronts = {}
    for path, layer in layers.items():
        pool = layer.considered if kind is None else [m for m in layer.considered
                                                      if m.candidate.dense or m.candidate.kind == kind]
        fronts[path] = front([Point(m.latency_ms, m.damage, m.candidate.label) for m in pool])
    return fronts


def _fronts(layers: Mapping[str, LayerSearch], fixed: float) -> Dict[str, List[Tuple[float, float]]]:
    """Predicted whole-model (ms, damage) fronts: the mix of every kind, and each kind alone."""
    kinds = sorted({m.candidate.kind for layer in layers.values() for m in layer.considered if not m.candidate.dense})
    fronts = {"mix": whole_front(_fronts_of(layers), fixed)}
    fronts.update({kind: whole_front(_fronts_of(layers, kind), fixed) for kind in kinds})
    return fronts


def _correct(original, searched: Mapping[str, LayerSearch], layers: Mapping[str, _Layer], report: SearchReport,
             clock: Clock, fixed: float, say, scorer: Optional["_WholeScorer"] = None, fallback: bool = True
             ) -> Dict[str, Measured]:
    """Allocate, build, measure, and allocate again with the prediction corrected
    (:func:`_next_fixed`: a mix slower than predicted leaves less room, a faster one room for
    less error), until the choice repeats or :data:`MAX_ATTEMPTS` models were measured. When no
    mix met the budget (and ``fallback``: not when another precision's mix met it, as a kind
    alone at its fastest has far more error), each kind alone at its fastest in every layer is
    measured too (per-layer timings can rank two kinds wrongly for the whole model); when one of
    those meets it, up to :data:`REFINE_ATTEMPTS` more mixes are tried between it and the loop's,
    for less error. The
    contenders for the final choice are scored whole by ``scorer`` when their mixes differ.
    Returns the choice of :attr:`SearchReport.final`."""
    rungs = {path: layer.front for path, layer in searched.items()}
    points = {path: [Point(m.latency_ms, m.damage) for m in front] for path, front in rungs.items()}
    tried: List[Dict[str, Measured]] = []
    seen: List[Dict[str, int]] = []

    def try_mix(fixed: float) -> bool:
        """Allocate with ``fixed`` and measure the mix; False when it was measured already."""
        try:
            position = allocate(points, report.budget_ms, fixed)
        except OutOfReach:
            position = {path: len(rungs) - 1 for path, rungs in points.items()}
        if position in seen:
            return False
        seen.append(position)
        _measure(original, {p: rungs[p][i] for p, i in position.items()}, layers, fixed, report, clock, say, tried)
        return True

    while len(report.attempts) < MAX_ATTEMPTS and try_mix(fixed):
        fixed = _next_fixed(report.attempts, report.budget_ms)
    if fallback and not report.met:
        for choice in _fastest_of_each_kind(searched):
            if all(choice != earlier for earlier in tried):
                _measure(original, choice, layers, fixed, report, clock, say, tried)
        for _ in range(REFINE_ATTEMPTS if report.met else 0):
            if not try_mix(_next_fixed(report.attempts, report.budget_ms)):
                break
    contenders = {id(attempt) for attempt in report.contenders()}
    pairs = [(a, c) for a, c in zip(report.attempts, tried) if id(a) in contenders]
    if scorer is not None and _mixes_differ(pairs):
        say(f"scoring {len(pairs)} mixes whole on {sum(len(b) for b in scorer.images)} held-out images")
    _score_whole(pairs, scorer)
    choice = tried[report.attempts.index(report.final)]
    _record_choice(searched, choice, report)
    return choice


def _next_fixed(attempts: Sequence[Attempt], budget: float) -> float:
    """The part outside the layers to allocate the next mix with: the budget less the layers'
    share at which the measurements say the whole model meets it (:func:`layer_share`, a secant
    step), else the last attempt's, corrected by what its measurement showed the prediction missed."""
    share = layer_share([(a.predicted_ms - a.fixed_ms, a.measured_ms) for a in attempts], budget)
    if share is None:
        last = attempts[-1]
        return last.fixed_ms + last.measured_ms - last.predicted_ms
    return budget - share


def _measure(original, choice: Dict[str, Measured], layers: Mapping[str, _Layer], fixed: float, report: SearchReport,
             clock: Clock, say, tried: List) -> float:
    """Time ``choice`` whole on the clock (built with fresh weights), record the attempt; returns the measured ms."""
    predicted = fixed + sum(m.latency_ms for m in choice.values())
    say(f"measuring the whole converted model (attempt {len(report.attempts) + 1}, predicted {predicted:.3f} ms)")
    measured = clock.model_ms(_build(original, choice, layers, fitted=False))
    report.attempts.append(Attempt(report.budget_ms, predicted, measured, fixed, sum(m.damage for m in choice.values()),
                                   {p: m.candidate.label for p, m in choice.items()}))
    tried.append(choice)
    report.met = report.met or measured <= report.budget_ms
    return measured


def _fastest_of_each_kind(searched: Mapping[str, LayerSearch]) -> List[Dict[str, Measured]]:
    """Per searched kind, the mix with that kind's fastest candidate in every layer where it is
    faster than dense (dense elsewhere): the uniform conversions a per-layer mix must beat."""
    kinds = sorted({m.candidate.kind for layer in searched.values() for m in layer.considered
                    if not m.candidate.dense and m.fit is not None})
    mixes = []
    for kind in kinds:
        mixes.append({path: min((m for m in layer.considered if m.candidate.kind == kind and m.fit is not None
                                 and m.latency_ms < layer.dense.latency_ms), default=layer.dense,
                                key=lambda m: m.latency_ms) for path, layer in searched.items()})
    return mixes


class _WholeScorer:
    """A mix's whole model, its candidates' fitted weights in place, scored by its relative
    output error against the original on held-out calibration images (remembered per mix, and
    in ``cache`` between searches when given)."""

    def __init__(self, original: nn.Module, layers: Mapping[str, _Layer], images: List[torch.Tensor],
                 cache: Optional[FitCache] = None, data: str = "") -> None:
        self.original, self.layers, self.images = original, layers, images
        self.cache, self.data = cache, data
        self.reference = _outputs(original, images)
        self.known: Dict[Tuple[Tuple[str, str], ...], float] = {}

    @classmethod
    def on(cls, original: nn.Module, layers: Mapping[str, _Layer], calib: Optional[List[torch.Tensor]],
           cache: Optional[FitCache] = None) -> Optional["_WholeScorer"]:
        """A scorer on the :data:`SCORE_IMAGES` after the search's own, or None when there are none."""
        images = [batch for batch in _first_images(calib, SCORE_IMAGES, skip=SEARCH_IMAGES) or [] if len(batch)]
        if not images:
            return None
        data = data_key(original, _first_images(calib, SEARCH_IMAGES + SCORE_IMAGES)) if cache is not None else ""
        return cls(original, layers, images, cache, data)

    def __call__(self, choice: Mapping[str, Measured]) -> float:
        key = tuple(sorted((path, measured.candidate.label) for path, measured in choice.items()))
        if key not in self.known:
            self.known[key] = self._cached(choice)
        return self.known[key]

    def _cached(self, choice: Mapping[str, Measured]) -> float:
        """The score from the cache, else computed now (and kept there)."""
        converted = [(path, m.candidate) for path, m in choice.items() if not m.candidate.dense]
        key = score_key(self.data, converted, holdout=FIT_HOLDOUT, accumulate="float32", search_images=SEARCH_IMAGES)
        known = self.cache.known_score(key) if self.cache is not None else None
        if known is not None:
            return known
        model = _build(self.original, choice, self.layers, fitted=True)
        score = relative_error(_outputs(model, self.images), self.reference)
        if self.cache is not None:
            self.cache.remember_score(key, score)
        return score


def _outputs(model: nn.Module, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``model``'s outputs on ``images`` in eval mode (the model's mode is restored)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [model(batch) for batch in images]
    finally:
        model.train(training)


def _build(original: nn.Module, choice: Mapping[str, Measured], layers: Mapping[str, _Layer], fitted: bool) -> nn.Module:
    """A copy of ``original`` with ``choice`` in place: fitted modules, or (``fitted`` False, for
    timing) the architectures with fresh weights."""
    model = copy.deepcopy(original)
    for path, measured in choice.items():
        if not measured.candidate.dense:
            layer = layers[path]
            module = copy.deepcopy(layer.module(measured.candidate)) if fitted else layer.skeleton(measured.candidate)
            set_module(model, path, module)
    return model


def _record_choice(layers: Mapping[str, LayerSearch], choice: Mapping[str, Measured], report: SearchReport) -> None:
    """Each layer's chosen candidate and the reason, in words."""
    where = f"{report.target} {report.precision}"
    for path, layer in layers.items():
        layer.chosen = choice[path]
        dense = layer.dense
        faster = [m for m in layer.considered[1:] if m.latency_ms < dense.latency_ms]
        if not layer.chosen.candidate.dense:
            layer.reason = (f"{dense.latency_ms / layer.chosen.latency_ms:.2f}x faster than dense on {where} "
                            f"for error {layer.chosen.error:.3f}")
        elif len(layer.considered) == 1:
            layer.reason = "dense kept: no candidate saves MACs on this layer"
        elif not faster:
            quickest = min(layer.considered[1:], key=lambda m: m.latency_ms)
            layer.reason = (f"dense kept: every candidate slower on {where} (dense {dense.latency_ms:.4f} ms, "
                            f"fastest candidate {quickest.candidate.label} {quickest.latency_ms:.4f} ms)")
        else:
            layer.reason = "dense kept: other layers save the time for less error"


__all__ = ["Attempt", "Clock", "LayerSearch", "MAX_ATTEMPTS", "Measured", "NOISE", "SCORE_IMAGES", "SearchReport",
           "SearchResult", "budget_of", "search"]
