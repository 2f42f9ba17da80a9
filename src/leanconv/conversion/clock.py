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
from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv.conversion.candidates import Candidate
from leanconv.conversion.latency import LatencyCache, TimingSetting, deployed_layer, describe
from leanconv.deploy.target import example_input
from leanconv.timing import synchronized, time_interleaved


class TargetClock:
    """Latencies on ``target`` (a :mod:`leanconv.deploy` target name) for inputs of ``input_size``.

    ``precision`` None: the precision the dense model is fastest in on this target (chosen by
    :meth:`baseline`). ``calib``: real batches (int8 calibration, and the input timings run
    on); ``rounds``: timing rounds per whole model (the median is used).
    """

    def __init__(self, target: str, input_size: Sequence[int], precision: Optional[str] = None, *,
                 calib: Optional[List[torch.Tensor]] = None, device: str = "cpu", threads: int = 1,
                 rounds: int = 3, min_run_time: float = 0.2, cache: Optional[LatencyCache] = None) -> None:
        self.target, self.input_size, self.precision = target, tuple(int(s) for s in input_size), precision
        self.calib, self.device, self.threads = _batches_of(calib, self.input_size[0]), str(device), threads
        self.rounds, self.min_run_time = rounds, min_run_time
        self._cache = cache
        if precision is not None:
            self.setting.check()

    @property
    def setting(self) -> TimingSetting:
        return TimingSetting(self.target, self.precision or "fp32", self.device, self.threads)

    @property
    def cache(self) -> LatencyCache:
        """The per-layer timing cache for the current precision (a scripted one when given)."""
        if self._cache is None or (self._cache.setting is not None and self._cache.setting != self.setting):
            self._cache = LatencyCache(self._cache.path if self._cache is not None else None, setting=self.setting)
        return self._cache

    def runnable_precisions(self) -> List[str]:
        """The precisions of the target that run on this machine's device (the asked one alone if any)."""
        from leanconv.deploy.measure import DEVICE_PRECISIONS
        from leanconv.deploy.target import get_target

        if self.precision is not None:
            return [self.precision]
        entry = get_target(self.target)
        native = DEVICE_PRECISIONS["cuda" if torch.device(self.device).type == "cuda" else "cpu"]
        runs = [p for p in native if p in entry.precisions and entry.unsupported(p, self.device) is None]
        if entry.missing() is not None or not runs:
            raise ValueError(f"target={self.target!r} cannot run here: "
                             f"{entry.missing() or 'none of its precisions runs on ' + self.device}")
        return runs

    def baseline(self, model: nn.Module) -> Tuple[float, str]:
        """The dense model at its best on the target: median ms and the precision that ran fastest.

        Measured once per model architecture, input size and setting (outputs checked against
        fp32 eager: a precision beyond its tolerance is not a candidate), then read from the
        latency cache: like a layer's, a whole model's timing does not depend on its weights."""
        from leanconv.deploy.measure import measure_targets

        precisions = self.runnable_precisions()
        known = {p: self._cached_model_ms(model, p) for p in precisions}
        if all(ms is not None for ms in known.values()):
            precision = min(known, key=lambda p: known[p])  # type: ignore[arg-type,return-value]
            return known[precision], precision  # type: ignore[return-value]
        report = measure_targets({"dense": model}, self.input_size, targets=[self.target], precisions=precisions,
                                 calib=self.calib, device=self.device, threads=self.threads, rounds=self.rounds,
                                 min_run_time=self.min_run_time, eager=False)
        for row in report.measured("dense"):
            cache = self._cache_for(row.precision)
            cache.remember(_model_description(model), self.input_size, row.latency.median)  # type: ignore[union-attr]
            cache.save()
        best = report.best("dense")
        return best.latency.median, best.precision  # type: ignore[union-attr]

    def _cache_for(self, precision: str) -> LatencyCache:
        setting = replace(self.setting, precision=precision)
        return self.cache if setting == self.cache.setting else LatencyCache(self.cache.path, setting=setting)

    def _cached_model_ms(self, model: nn.Module, precision: str) -> Optional[float]:
        return self._cache_for(precision).known(_model_description(model), self.input_size)

    def layer_ms(self, conv: nn.Conv2d, candidate: Candidate, module: nn.Module,
                 input_shape: Tuple[int, ...]) -> float:
        kind = "dense" if candidate.dense else candidate.kind
        return self.cache.latency(describe(conv, kind, candidate.options), module, input_shape)

    def save(self) -> None:
        """Write the timings taken so far to the cache file."""
        if self._cache is not None:
            self._cache.save()

    def model_ms(self, model: nn.Module) -> float:
        """Median ms of ``model`` on the target in :attr:`precision` over :attr:`rounds` rounds, built
        the quick way a layer is (:func:`~leanconv.conversion.latency.deployed_layer`): the search
        compares mixes by time; the deployment users run is measured with real data after it."""
        self.save()  # per-layer timings reach the disk before a whole-model build can fail
        fitting = [b for b in self.calib or [] if tuple(b.shape) == self.input_size]
        example = fitting[0] if fitting else example_input(self.input_size, self.device)
        deployed = deployed_layer(self.setting, model, example)
        call = synchronized(lambda: deployed(example), torch.device(self.device))
        timed = time_interleaved([call], rounds=self.rounds, min_run_time=self.min_run_time, num_threads=self.threads)
        return timed.spread(0).median


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


__all__ = ["TargetClock"]
