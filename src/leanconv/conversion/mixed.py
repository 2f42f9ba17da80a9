"""``convert(to='auto')`` inside :func:`leanconv.convert`: check the request, run the search
(:mod:`leanconv.conversion.auto`) on a clock, and turn its choice into the model, the plan
(with the deployment it was chosen for) and the per-layer report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv.analysis.counting import layer_macs
from leanconv.conversion.auto import search
from leanconv.conversion.candidates import searched_kinds
from leanconv.conversion.fit_cache import FitCache
from leanconv.conversion.plan import AUTO, LayerPlan, Plan
from leanconv.conversion.result import ConversionResult, LayerReport
from leanconv.conversion.surgery import conv_spec, jsonable, kept_groups, set_module, source_macs
from leanconv.kinds import get_kind


class RequestNotMet(ValueError):
    """No measured mix meets the ``to='auto'`` request (``report``: what the search measured)."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class AutoRequest:
    """The ``to='auto'`` arguments of :func:`leanconv.convert`."""

    target: Optional[str] = None
    precision: Optional[str] = None
    target_speedup: Optional[float] = None
    latency_budget: Optional[float] = None
    kinds: Optional[Sequence[str]] = None
    accept_slower: bool = False
    threads: int = 1
    clock: Optional[Any] = None
    progress: Optional[Callable[[str], None]] = None

    def check(self, to: str, input_size: Optional[Sequence[int]], **rank_arguments: Any) -> None:
        """One clear ValueError for arguments that do not fit ``to`` (auto or a kind)."""
        own = {"target": self.target, "precision": self.precision, "target_speedup": self.target_speedup,
               "kinds": self.kinds, "accept_slower": self.accept_slower or None}
        if to != AUTO:
            given = [name for name, value in own.items() if value is not None]
            if given:
                raise ValueError(f"{given[0]}={own[given[0]]!r} applies only to to='auto' (a per-layer choice of kinds "
                                 "by latency on a deployment target)")
            return
        for name, value in rank_arguments.items():
            if value is not None and value is not False:
                raise ValueError(f"{name}={value!r} does not apply to to='auto': the search chooses each layer's kind "
                                 "and options")
        self._check_target(input_size)
        self._check_goal()
        if self.kinds is not None:
            _check_kinds(self.kinds)
        if not isinstance(self.accept_slower, bool):
            raise ValueError(f"accept_slower={self.accept_slower!r} must be True or False")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads={self.threads!r} must be an int >= 1")

    def _check_target(self, input_size: Optional[Sequence[int]]) -> None:
        if self.clock is None:
            from leanconv.deploy.target import check_precision, get_target

            if not isinstance(self.target, str):
                raise ValueError(f"target={self.target!r}: to='auto' needs a deployment target name "
                                 "('onnxruntime', 'openvino', 'torch', ...) to measure on")
            get_target(self.target)
            if self.precision is not None:
                check_precision(self.precision)
        if input_size is None:
            raise ValueError("to='auto' needs input_size (N, C, H, W): latency is measured at that shape")

    def _check_goal(self) -> None:
        goals = {"target_speedup": self.target_speedup, "latency_budget": self.latency_budget}
        given = {name: value for name, value in goals.items() if value is not None}
        if len(given) != 1:
            raise ValueError("to='auto' takes exactly one of target_speedup (x, against the dense model at its best on "
                             "the target) and latency_budget (ms on the target)")
        (name, value), = given.items()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive finite number")


def _check_kinds(kinds: Sequence[str]) -> None:
    searched = searched_kinds()
    if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
        raise ValueError(f"kinds={kinds!r} must be a non-empty list of kind names from {searched}")
    for name in kinds:
        if name not in searched:
            raise ValueError(f"kinds={list(kinds)!r}: {name!r} is not a searched kind (one of {searched})")


def _clock(request: AutoRequest, input_size: Sequence[int], calib: Optional[List[torch.Tensor]], device: str):
    if request.clock is not None:
        return request.clock
    from leanconv.conversion.clock import TargetClock

    return TargetClock(request.target, input_size, request.precision, calib=calib,  # type: ignore[arg-type]
                       device=device, threads=request.threads)


def convert_auto(model: nn.Module, original: nn.Module, eligible: List[Tuple[str, nn.Conv2d]],
                 input_size: Sequence[int], sizes: Mapping[str, Tuple[int, int]],
                 calib: Optional[List[torch.Tensor]], request: AutoRequest, device: str) -> ConversionResult:
    """Search, then put the chosen modules into ``model`` (the copy being converted); raises the
    unreachable-request error unless ``accept_slower``."""
    clock = _clock(request, input_size, calib, device)
    fits = FitCache() if request.clock is None else None  # a scripted clock's search keeps nothing on disk
    found = search(original, eligible, input_size, sizes, clock, target=str(request.target or "scripted"),
                   target_speedup=request.target_speedup, latency_budget=request.latency_budget, calib=calib,
                   kinds=request.kinds, progress=request.progress, fit_cache=fits)
    if hasattr(clock, "save"):
        clock.save()
    report = found.report
    if not report.met and not request.accept_slower:
        raise RequestNotMet(f"{report.request} is out of reach on {report.target} {report.precision} at input "
                         f"{tuple(report.input_size)}: the fastest mix measured reaches {report.fastest_speedup:.2f}x "
                         f"the dense model at its best ({report.baseline_ms:.3f} ms, {report.target} "
                         f"{report.baseline_precision}); ask for at most that, or accept_slower=True "
                         "(--accept-slower) for the closest mix", report)
    layers: Dict[str, LayerPlan] = {}
    reports = []
    for path, conv in eligible:
        reports.append(_layer_report(path, conv, report.layers[path], sizes.get(path)))
        measured = found.chosen.get(path)
        if measured is not None:
            set_module(model, path, found.modules[path])
            layers[path] = LayerPlan(measured.candidate.kind, {**kept_groups(conv), **measured.candidate.options})
    deployment = {"target": report.target, "precision": report.precision, "input_size": tuple(map(int, input_size)),
                  "threads": request.threads}
    result = ConversionResult(model, Plan(AUTO, layers, deployment=deployment), reports)
    result.search = report
    return result


def _layer_report(path: str, conv: nn.Conv2d, layer: Any, hw: Optional[Tuple[int, int]]) -> LayerReport:
    """The conversion report's row for one searched layer."""
    chosen = layer.chosen
    macs, params = source_macs(conv, hw), sum(p.numel() for p in conv.parameters())
    if chosen.candidate.dense:
        return LayerReport(path, False, "dense", {}, macs, macs, params, params, 0.0, layer.reason,
                           latency_before_ms=layer.dense.latency_ms, latency_after_ms=layer.dense.latency_ms)
    kind, options = chosen.candidate.kind, {**kept_groups(conv), **chosen.candidate.options}
    spec = conv_spec(conv, **options)
    return LayerReport(path, True, kind, jsonable(options), macs, int(layer_macs(kind, spec, hw)), params,
                       get_kind(kind).params(spec), chosen.fit.weight_error, layer.reason,
                       latency_before_ms=layer.dense.latency_ms, latency_after_ms=chosen.latency_ms)


__all__ = ["AutoRequest", "RequestNotMet", "convert_auto"]
