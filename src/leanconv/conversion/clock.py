"""The clock of ``convert(to='auto')``: latencies measured on a deployment target.

:class:`TargetClock` measures the dense model on every precision the target runs here and
keeps its fastest as the honest baseline (:func:`leanconv.deploy.measure.measure_targets`,
outputs checked against fp32 eager), times each layer candidate alone on the target
(:class:`~leanconv.conversion.latency.LatencyCache` with a
:class:`~leanconv.conversion.latency.TimingSetting`: cached on disk per target, runtime
version, device, precision and threads) and times whole converted models there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv.conversion.candidates import Candidate
from leanconv.conversion.latency import LatencyCache, TimingSetting, deployed_layer, describe
from leanconv.deploy.target import example_input
from leanconv.timing import synchronized, time_interleaved


class TargetClock:
    """Latencies on ``target`` (a :mod:`leanconv.deploy` target name) for inputs of ``input_size``.

    ``precision`` None: every precision the target runs here is searched (the search keeps the
    one whose mix does best). ``calib``: real batches (int8 calibration, and the input the
    dense model is checked and timed on); ``rounds``: timing rounds per whole model (the
    median is used); ``cache_path``: the latency cache file (default: the user cache folder).
    """

    def __init__(self, target: str, input_size: Sequence[int], precision: Optional[str] = None, *,
                 calib: Optional[List[torch.Tensor]] = None, device: str = "cpu", threads: int = 1,
                 rounds: int = 3, min_run_time: float = 0.2, cache_path: Optional[Path] = None) -> None:
        self.target, self.input_size, self.precision = target, tuple(int(s) for s in input_size), precision
        self.calib, self.device, self.threads = _batches_of(calib, self.input_size[0]), str(device), threads
        self.rounds, self.min_run_time = rounds, min_run_time
        self._path = cache_path  # None: the user cache folder's latency.json
        self._caches: Dict[str, LatencyCache] = {}
        self._reference: Optional[Tuple[nn.Module, str, float]] = None  # dense model, best precision, its ms
        self._reference_deployed = None
        self._no_empty_graph = False  # set when the runtime refused the per-call-cost graph once
        self.asked = precision  # None: every precision the target runs here is searched
        if precision is not None:
            self.setting.check()

    @property
    def setting(self) -> TimingSetting:
        return TimingSetting(self.target, self.precision or "fp32", self.device, self.threads)

    @property
    def cache(self) -> LatencyCache:
        """The per-layer timing cache for the current precision."""
        return self._cache_for(self.precision or "fp32")

    def precisions(self) -> List[str]:
        """The precisions of the target that run on this machine's device (the asked one alone if any)."""
        from leanconv.deploy.measure import DEVICE_PRECISIONS
        from leanconv.deploy.target import get_target

        if self.asked is not None:
            return [self.asked]
        entry = get_target(self.target)
        native = DEVICE_PRECISIONS["cuda" if torch.device(self.device).type == "cuda" else "cpu"]
        runs = [p for p in native if p in entry.precisions and entry.unsupported(p, self.device) is None]
        if entry.missing() is not None or not runs:
            raise ValueError(f"target={self.target!r} cannot run here: "
                             f"{entry.missing() or 'none of its precisions runs on ' + self.device}")
        return runs

    def baseline(self, model: nn.Module) -> Dict[str, float]:
        """The dense model's median ms in each precision searched whose output is correct.

        Measured once per model architecture, input size and setting (outputs checked against
        fp32 eager: a precision beyond its tolerance is left out), then read from the latency
        cache: like a layer's, a whole model's timing does not depend on its weights."""
        from leanconv.deploy.measure import measure_targets

        precisions = self.precisions()
        known = {p: self._cached_model_ms(model, p) for p in precisions}
        if all(ms is not None for ms in known.values()):
            return self._keep_reference(model, known)  # type: ignore[arg-type]
        report = measure_targets({"dense": model}, self.input_size, targets=[self.target], precisions=precisions,
                                 calib=self.calib, device=self.device, threads=self.threads, rounds=self.rounds,
                                 min_run_time=self.min_run_time, eager=False)
        measured = {row.precision: row.latency.median for row in report.measured("dense")}  # type: ignore[union-attr]
        if not measured:
            raise ValueError(f"target={self.target!r}: the dense model runs correctly in none of {precisions} here")
        for precision, ms in measured.items():
            _remember_model(self._cache_for(precision), model, self.input_size, ms)
        return self._keep_reference(model, measured)

    def _keep_reference(self, model: nn.Module, dense_ms: Dict[str, float]) -> Dict[str, float]:
        """Remember the dense model at its best precision: whole models are timed beside it."""
        best = min(dense_ms, key=lambda p: dense_ms[p])
        self._reference, self._reference_deployed = (model, best, dense_ms[best]), None
        return dense_ms

    def _cache_for(self, precision: str) -> LatencyCache:
        """One cache object per precision (all in one file), made on first use."""
        if precision not in self._caches:
            self._caches[precision] = LatencyCache(self._path, setting=replace(self.setting, precision=precision))
        return self._caches[precision]

    def _cached_model_ms(self, model: nn.Module, precision: str) -> Optional[float]:
        return self._cache_for(precision).known(_model_description(model), self.input_size)

    def layer_ms(self, conv: nn.Conv2d, candidate: Candidate, module: nn.Module,
                 input_shape: Tuple[int, ...]) -> float:
        """The candidate alone on the target, less the runtime's cost of one call (:meth:`call_ms`):
        a whole model pays that once, not once per layer."""
        kind = "dense" if candidate.dense else candidate.kind
        ms = self.cache.latency(describe(conv, kind, candidate.options), module, input_shape)
        return max(ms - self.call_ms(input_shape), 0.05 * ms)

    def call_ms(self, input_shape: Tuple[int, ...]) -> float:
        """What one call of the target costs with no work in it: a graph that passes an input of
        ``input_shape`` through, in fp32 (0 where the runtime cannot build an empty graph)."""
        if self._no_empty_graph:
            return 0.0
        cache = self._cache_for("fp32")
        try:
            return cache.latency(f"call overhead|{tuple(input_shape)}", nn.Identity(), input_shape)
        except Exception:  # a runtime refusing a graph without operators: no correction, and no retry
            self._no_empty_graph = True
            return 0.0

    def save(self) -> None:
        """Write the timings taken so far to the cache file."""
        for cache in self._caches.values():
            cache.save()

    def model_ms(self, model: nn.Module) -> float:
        """``model`` on the target in :attr:`precision`, in the baseline's terms: timed in
        :attr:`rounds` rounds interleaved with the dense model at its best precision, the median
        per-round ratio times the baseline's ms. A load that comes and goes on the machine slows
        both alike, so the verdict against the budget does not drift with it. Both are built the
        quick way a layer is (:func:`~leanconv.conversion.latency.deployed_layer`); the deployment
        users run is measured with real data after the search. Cached like a layer's timing,
        under the model's architecture: a second search of the same model measures nothing."""
        known = self.cache.known(_model_description(model), self.input_size)
        if known is not None:
            return known
        self.save()  # per-layer timings reach the disk before a whole-model build can fail
        example = self._example()
        calls = [synchronized(lambda d=deployed_layer(self.setting, model, example): d(example),
                              torch.device(self.device))]
        if self._reference is not None:
            calls.append(self._reference_call(example))
        timed = time_interleaved(calls, rounds=self.rounds, min_run_time=self.min_run_time, num_threads=self.threads)
        ms = timed.spread(0).median if self._reference is None else timed.ratio(0, 1).median * self._reference[2]
        _remember_model(self.cache, model, self.input_size, ms)
        return ms

    def excludes(self, candidate: Candidate) -> Optional[str]:
        """Why the target computes ``candidate`` wrongly inside a model (None: offer it)."""
        from leanconv.deploy.target import get_target

        return None if candidate.dense else get_target(self.target).computes_wrongly(candidate.kind, candidate.options)

    def deployment_problem(self, model: nn.Module) -> Optional[str]:
        """Why ``model`` cannot be deployed on the target in :attr:`precision` (None: it can): built
        the way users deploy it (int8 calibrated on the calibration images), its output on a
        calibration batch is checked against fp32 eager within the precision's tolerance, as the
        dense baseline's is. Per-layer errors are fp32 errors; this catches a mix that a runtime
        quantizes worse than its layers alone."""
        from leanconv.deploy.target import get_target, output_difference, reference_output, tolerance_problem

        example, precision = self._example(), self.precision or "fp32"
        try:
            deployed = get_target(self.target).build(model, example, precision, self.calib, self.threads)
            difference = output_difference(deployed(example), reference_output(model, example))
        except Exception as error:  # a runtime that cannot take the mix: say so, do not crash the search
            return f"its {self.target} {precision} build failed ({type(error).__name__}: {str(error)[:120]})"
        problem = tolerance_problem(difference, precision)
        return None if problem is None else f"deployed on {self.target} {precision}, its {problem} (against fp32 eager)"

    def _example(self) -> torch.Tensor:
        fitting = [b for b in self.calib or [] if tuple(b.shape) == self.input_size]
        return fitting[0] if fitting else example_input(self.input_size, self.device)

    def _reference_call(self, example: torch.Tensor):
        """The dense model at its best precision, deployed once, as a timed call."""
        dense, precision, _ = self._reference
        if self._reference_deployed is None:
            self._reference_deployed = deployed_layer(replace(self.setting, precision=precision), dense, example)
        deployed = self._reference_deployed
        return synchronized(lambda: deployed(example), torch.device(self.device))


def remember_dense(model: nn.Module, report, device: str = "cpu", threads: int = 1) -> None:
    """Put the timings of ``model`` measured by :func:`leanconv.deploy.measure.measure_targets`
    (``report``, the model labelled ``'original'`` or ``'dense'``) into the latency cache, where
    a later search's :meth:`TargetClock.baseline` finds them instead of measuring again."""
    label = next(r.model for r in report.rows if r.model in ("original", "dense"))
    for row in report.measured(label):
        _remember_model(LatencyCache(setting=TimingSetting(row.target, row.precision, device, threads)), model,
                        tuple(report.input_size), row.latency.median)  # type: ignore[union-attr]


def _remember_model(cache: LatencyCache, model: nn.Module, input_size: Tuple[int, ...], ms: float) -> None:
    """A whole model's timing into ``cache`` under its architecture, written to disk at once."""
    cache.remember(_model_description(model), input_size, ms)
    cache.save()


def _model_description(model: nn.Module) -> str:
    """A whole model's timing key: its architecture (the modules and their arguments, not weights)."""
    return "model|" + hashlib.sha256(repr(model).encode()).hexdigest()[:20]


def _batches_of(calib: Optional[List[torch.Tensor]], batch: int) -> Optional[List[torch.Tensor]]:
    """The calibration images cut into batches of the measured batch size (the remainder dropped),
    so that checks and timings run on real images: int8 ranges calibrated on images clip a
    random input, which would make a correct int8 deployment look wrong."""
    if not calib:
        return calib
    images = torch.cat(list(calib))
    count = len(images) // batch * batch
    return list(images[:count].split(batch)) if count else list(calib)


__all__ = ["TargetClock", "remember_dense"]
