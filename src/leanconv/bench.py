"""Latency measurement and deployment settings.

:func:`measure_latency` (in :mod:`leanconv.timing`, re-exported here) is the one timer: warm-up,
then the median of ``torch.utils.benchmark`` adaptive runs. It is used by ``compare(measure=True)``, the scripts in ``benchmarks/`` and the
deployment settings below, so every latency leanconv reports is measured the same way. Note
that ``torch.utils.benchmark.Timer`` runs on ``num_threads`` threads (1 unless told), whatever
``torch.get_num_threads()`` says.

Deployment settings are the forms one model can be run in: ``eager`` (NCHW), ``channels_last``
(module and input), ``fused`` (``leanconv.fuse``: BN folded, blocks merged; a copy),
``fused_channels_last``, ``frozen`` and ``frozen_channels_last`` (the fused model traced, frozen
and optimized for inference by TorchScript, weights prepacked for oneDNN) and, on request,
``compiled`` (``torch.compile`` of the fused model).
:func:`benchmark_settings` measures each, checks its output against eager's and picks the
fastest; :func:`realized_efficiency` does it for an original and its converted model and
reports the realized speedup next to the MAC reduction.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv import fusion
from leanconv.analysis import profile
from leanconv.timing import measure_latency


SETTINGS: Tuple[str, ...] = ("eager", "channels_last", "fused", "fused_channels_last", "frozen",
                             "frozen_channels_last", "compiled")
DEFAULT_SETTINGS: Tuple[str, ...] = SETTINGS[:6]


def _channels_last(module: nn.Module, x: torch.Tensor) -> Tuple[nn.Module, torch.Tensor]:
    return module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def _frozen(module: nn.Module, x: torch.Tensor) -> Tuple[nn.Module, torch.Tensor]:
    """TorchScript trace, freeze and ``optimize_for_inference``: weights prepacked for oneDNN
    once instead of on every call, which is what small depthwise and 1x1 convs need on a CPU
    (measured on the rank-1 separable digits CNN at batch 16, 1 thread: 6.9 ms fused and
    channels_last -> 1.6 ms frozen)."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module, x)))
        frozen(x)
    return frozen, x


def prepare(model: nn.Module, setting: str, x: torch.Tensor) -> Tuple[nn.Module, torch.Tensor]:
    """``(module, input)`` for running ``model`` on ``x`` in ``setting``; never changes ``model``.

    ``compiled`` compiles the fused model with ``torch.compile`` (the compile happens on the
    first call; it raises here if it fails).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r} must be one of {SETTINGS}")
    if setting == "eager":
        return copy.deepcopy(model).eval(), x
    if setting == "channels_last":
        return _channels_last(copy.deepcopy(model).eval(), x)
    fused = fusion.fuse(model)  # a copy, in eval mode
    if setting == "fused":
        return fused, x
    if setting == "fused_channels_last":
        return _channels_last(fused, x)
    if setting in ("frozen", "frozen_channels_last"):
        return _frozen(*(_channels_last(fused, x) if setting == "frozen_channels_last" else (fused, x)))
    compiled = torch.compile(fused)
    with torch.inference_mode():
        compiled(x)  # compile now, so a failure is caught here and not timed later
    return compiled, x


@dataclass
class SettingResult:
    """One setting's median latency (None when skipped, with the reason) and its largest
    absolute output difference from eager."""

    setting: str
    latency_ms: Optional[float] = None
    skipped: Optional[str] = None
    max_abs_diff: Optional[float] = None


@dataclass
class SettingsReport:
    """Latency of one model in each deployment setting, at one input shape."""

    input_shape: Tuple[int, ...]
    threads: int
    results: List[SettingResult]
    device: str = "cpu"

    @property
    def measured(self) -> List[SettingResult]:
        return [r for r in self.results if r.latency_ms is not None]

    @property
    def best(self) -> SettingResult:
        """The fastest measured setting."""
        if not self.measured:
            raise ValueError("no setting was measured: every one was skipped")
        return min(self.measured, key=lambda r: r.latency_ms)

    def latency(self, setting: str) -> Optional[float]:
        return next((r.latency_ms for r in self.results if r.setting == setting), None)

    def to_dict(self) -> Dict:
        return {**asdict(self), "best": self.best.setting}

    def to_markdown(self) -> str:
        lines = [f"Input {'x'.join(map(str, self.input_shape))}, {self.threads} thread(s), {self.device}; "
                 f"fastest: **{self.best.setting}**", "",
                 "| setting | latency ms | vs eager | max abs diff vs eager | note |", "|---|---:|---:|---:|---|"]
        eager = self.latency("eager")
        for r in self.results:
            ratio = f"{eager / r.latency_ms:.2f}x" if eager and r.latency_ms else ""
            diff = f"{r.max_abs_diff:.2e}" if r.max_abs_diff is not None else ""
            lat = f"{r.latency_ms:.3f}" if r.latency_ms is not None else "skipped"
            lines.append(f"| {r.setting} | {lat} | {ratio} | {diff} | {r.skipped or ''} |")
        return "\n".join(lines) + "\n"


def _check_settings(settings: Optional[Sequence[str]], compile: bool) -> List[str]:
    chosen = list(DEFAULT_SETTINGS if settings is None else settings)
    if not chosen:
        raise ValueError("settings=[] must name at least one setting")
    for s in chosen:
        if s not in SETTINGS:
            raise ValueError(f"settings entry {s!r} must be one of {SETTINGS}")
    if compile and "compiled" not in chosen:
        chosen.append("compiled")
    return chosen


def _example(input_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    if (not isinstance(input_size, (tuple, list)) or len(input_size) < 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_size)):
        raise ValueError(f"input_size={input_size!r} must be a shape of positive ints, e.g. (1, 3, 224, 224)")
    return torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(seed))


def _measure_models(models: Sequence[nn.Module], x: torch.Tensor, settings: Sequence[str], threads: int,
                    min_run_time: float, warmup: int, rounds: int, rtol: float, atol: float,
                    on_step: Callable[[str], None]) -> List[SettingsReport]:
    """Every model in every setting, interleaved (model A, model B, A, B, ... for ``rounds``),
    so that a change in machine load hits both; median over rounds."""
    reports = [SettingsReport(tuple(x.shape), threads, [], str(x.device)) for _ in models]
    with torch.inference_mode():  # eager outputs from copies: the models keep their mode
        expected_outputs = [copy.deepcopy(model).eval()(x).float() for model in models]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for setting in settings:
            prepared: List[Optional[Tuple[nn.Module, torch.Tensor]]] = []
            for model, report, expected in zip(models, reports, expected_outputs):
                result = SettingResult(setting)
                report.results.append(result)
                try:
                    module, example = prepare(model, setting, x)
                except Exception as error:  # compile can fail in many ways; say which and go on
                    result.skipped = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
                    prepared.append(None)
                    continue
                with torch.inference_mode():
                    got = module(example).float()
                result.max_abs_diff = float((got - expected).abs().max())
                if not torch.allclose(got, expected, rtol=rtol, atol=atol):
                    result.skipped = f"output differs from eager by up to {result.max_abs_diff:.3g}"
                    prepared.append(None)
                    continue
                prepared.append((module, example))
            samples: List[List[float]] = [[] for _ in models]
            for _ in range(rounds):
                for index, item in enumerate(prepared):
                    if item is not None:
                        samples[index].append(measure_latency(item[0], item[1], min_run_time, warmup,
                                                              num_threads=threads))
                        on_step(setting)
            for report, values in zip(reports, samples):
                if values:
                    report.results[-1].latency_ms = statistics.median(values)
    finally:
        torch.set_num_threads(previous)
    return reports


class _Steps:
    """A rich progress bar on stderr counting measurements (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label, self.bar, self.task = enabled, total, label, None, None

    def __enter__(self) -> Callable[[str], None]:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total)
        return self._step

    def _step(self, setting: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=f"{self.label}: {setting}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _check_common(threads: Optional[int], min_run_time: float, rounds: int) -> int:
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be an int >= 1")
    if not (isinstance(min_run_time, (int, float)) and min_run_time > 0):
        raise ValueError(f"min_run_time={min_run_time!r} must be > 0 (seconds)")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be an int >= 1")
    return threads


def benchmark_settings(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    settings: Optional[Sequence[str]] = None,
    compile: bool = False,
    threads: Optional[int] = None,
    min_run_time: float = 0.2,
    warmup: int = 3,
    rounds: int = 1,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    progress: bool = False,
) -> SettingsReport:
    """Measure ``model`` on a random input of ``input_size`` in each deployment setting.

    ``settings``: default eager, channels_last, fused, fused_channels_last; ``compile=True``
    adds ``compiled`` (slow to build on a small CPU; skipped with the reason if it fails). A
    setting whose output is not allclose to eager's (``rtol``, ``atol``) is skipped too, so
    the fastest (``report.best``) is always a correct one. ``threads``: default torch's.
    The model is never changed (each setting works on a copy).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    chosen = _check_settings(settings, compile)
    threads = _check_common(threads, min_run_time, rounds)
    x = _example(input_size)
    with _Steps(progress, len(chosen) * rounds, "bench") as step:
        return _measure_models([model], x, chosen, threads, min_run_time, warmup, rounds, rtol, atol, step)[0]


def efficiency(speedup: float, mac_reduction: float) -> float:
    """Realized efficiency: measured speedup over the speedup the MACs promise
    (``original MACs / converted MACs``). 1.0: as much faster as the MAC count says."""
    for name, value in (("speedup", speedup), ("mac_reduction", mac_reduction)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} must be a finite number > 0")
    return speedup / mac_reduction


@dataclass
class EfficiencyReport:
    """An original and its converted model, measured in the same settings in one process."""

    original: SettingsReport
    converted: SettingsReport
    original_macs: int
    converted_macs: int
    meta: Dict = field(default_factory=dict)

    @property
    def mac_reduction(self) -> float:
        """Original MACs / converted MACs: the speedup arithmetic promises."""
        return self.original_macs / self.converted_macs

    @property
    def speedup(self) -> float:
        """Each model in its own fastest setting: original best latency / converted best."""
        return self.original.best.latency_ms / self.converted.best.latency_ms

    @property
    def efficiency(self) -> float:
        """Realized efficiency = speedup / MAC reduction, both models deployed at their best."""
        return efficiency(self.speedup, self.mac_reduction)

    def per_setting(self) -> List[Dict]:
        """Per setting: both latencies, the speedup in that same setting and its efficiency."""
        rows = []
        for o, c in zip(self.original.results, self.converted.results):
            row = {"setting": o.setting, "original_ms": o.latency_ms, "converted_ms": c.latency_ms,
                   "speedup": None, "efficiency": None, "note": o.skipped or c.skipped}
            if o.latency_ms and c.latency_ms:
                row["speedup"] = o.latency_ms / c.latency_ms
                row["efficiency"] = efficiency(row["speedup"], self.mac_reduction)
            rows.append(row)
        return rows

    def to_dict(self) -> Dict:
        return {"original": self.original.to_dict(), "converted": self.converted.to_dict(),
                "original_macs": self.original_macs, "converted_macs": self.converted_macs,
                "mac_reduction": self.mac_reduction, "speedup": self.speedup, "efficiency": self.efficiency,
                "original_best": self.original.best.setting, "converted_best": self.converted.best.setting,
                "per_setting": self.per_setting(), "meta": self.meta}

    def to_markdown(self) -> str:
        o, c = self.original, self.converted
        lines = [f"Input {'x'.join(map(str, o.input_shape))}, {o.threads} thread(s), {o.device}. MACs "
                 f"{self.original_macs:,} -> {self.converted_macs:,} ({self.mac_reduction:.2f}x fewer).", "",
                 "| setting | original ms | converted ms | speedup | realized efficiency | note |",
                 "|---|---:|---:|---:|---:|---|"]
        for row in self.per_setting():
            cell = (lambda v, f: f.format(v) if v is not None else "skipped")
            lines.append(f"| {row['setting']} | {cell(row['original_ms'], '{:.3f}')} | "
                         f"{cell(row['converted_ms'], '{:.3f}')} | {cell(row['speedup'], '{:.2f}x')} | "
                         f"{cell(row['efficiency'], '{:.2f}')} | {row['note'] or ''} |")
        lines += ["", f"Deployed (each at its fastest): original **{o.best.setting}** {o.best.latency_ms:.3f} ms, "
                      f"converted **{c.best.setting}** {c.best.latency_ms:.3f} ms: speedup **{self.speedup:.2f}x**, "
                      f"realized efficiency **{self.efficiency:.2f}** (= speedup / MAC reduction)."]
        return "\n".join(lines) + "\n"


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Conv + linear MACs of ``model`` at ``input_size`` (leanconv.profile, on the meta device)."""
    return int(profile(model, tuple(input_size)).total_macs)


def realized_efficiency(
    original: nn.Module,
    converted: nn.Module,
    input_size: Sequence[int],
    *,
    settings: Optional[Sequence[str]] = None,
    compile: bool = False,
    threads: Optional[int] = None,
    min_run_time: float = 0.2,
    warmup: int = 3,
    rounds: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    progress: bool = False,
) -> EfficiencyReport:
    """Measure ``original`` and ``converted`` in every setting (interleaved, ``rounds`` times)
    and report speedup / MAC reduction. MACs come from ``leanconv.profile`` on the meta device.
    Neither model is changed. Options as in :func:`benchmark_settings`.
    """
    for name, model in (("original", original), ("converted", converted)):
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name}={type(model).__name__} must be an nn.Module")
    chosen = _check_settings(settings, compile)
    threads = _check_common(threads, min_run_time, rounds)
    x = _example(input_size)
    macs = (count_macs(original, x.shape), count_macs(converted, x.shape))
    if not all(macs):
        raise ValueError(f"original and converted must both have conv/linear MACs at {tuple(x.shape)}, got {macs}")
    with _Steps(progress, 2 * len(chosen) * rounds, "realized efficiency") as step:
        o, c = _measure_models([original, converted], x, chosen, threads, min_run_time, warmup, rounds, rtol, atol,
                               step)
    meta = {"torch": torch.__version__, "threads": threads, "rounds": rounds, "min_run_time": min_run_time,
            "cpu": platform.processor() or platform.machine(), "mkldnn": torch.backends.mkldnn.is_available()}
    return EfficiencyReport(o, c, macs[0], macs[1], meta)


__all__ = ["DEFAULT_SETTINGS", "EfficiencyReport", "SETTINGS", "SettingResult", "SettingsReport", "benchmark_settings",
           "count_macs", "efficiency", "measure_latency", "prepare", "realized_efficiency"]
