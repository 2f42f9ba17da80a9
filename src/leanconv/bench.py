"""Latency measurement and deployment settings.

Every latency here comes from the one timer, :func:`leanconv.timing.time_interleaved`: warm-up,
then interleaved rounds (every setting of every model measured once per round: A, B, A, B,
...), each round the median of ``torch.utils.benchmark`` adaptive runs. A latency is the median
over rounds with its range (min-max); a speedup's range comes from the per-round ratios, and
when that range straddles 1 the tables say "within noise" instead of a confident figure.
:func:`measure_latency` (re-exported here) is its one-round case, used by
``compare(measure=True)`` and the latency budgets. ``torch.utils.benchmark.Timer`` runs on
``num_threads`` threads (1 unless told), whatever ``torch.get_num_threads()`` says.

Deployment settings are the forms one model can be run in: ``eager`` (NCHW), ``channels_last``
(module and input), ``fused`` (``leanconv.fuse``: BN folded, blocks merged; a copy),
``fused_channels_last``, ``frozen`` and ``frozen_channels_last`` (the fused model traced, frozen
and optimized for inference by TorchScript: on a CPU, weights prepacked for oneDNN; on CUDA,
cuDNN's conv-add-relu fusions, no prepacking) and, on request, ``compiled`` (``torch.compile``
of the fused model). :func:`benchmark_settings` measures each, checks its output against
eager's and picks the fastest; :func:`realized_efficiency` does it for an original and its
converted model and reports the realized speedup next to the MAC reduction. Everything runs on
the model's device (its first parameter's or buffer's) or on ``device=`` (a copy is moved
there, never the user's model); a setting that fails to build or run there is skipped, the
table saying why.
"""

from __future__ import annotations

import copy
import math
import platform
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv import fusion
from leanconv.analysis import profile
from leanconv.analysis.counting import model_device
from leanconv.timing import (Measure, Spread, format_ms, format_ratio, measure_latency, ratio_spread, synchronized,
                             time_interleaved)

Device = Union[str, torch.device]

SETTINGS: Tuple[str, ...] = ("eager", "channels_last", "fused", "fused_channels_last", "frozen",
                             "frozen_channels_last", "compiled")
DEFAULT_SETTINGS: Tuple[str, ...] = SETTINGS[:6]


def _channels_last(module: nn.Module, x: torch.Tensor) -> Tuple[nn.Module, torch.Tensor]:
    return module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def _frozen(module: nn.Module, x: torch.Tensor) -> Tuple[nn.Module, torch.Tensor]:
    return frozen_module(module, x), x


def frozen_module(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """TorchScript trace, freeze and ``optimize_for_inference``: weights prepacked for oneDNN
    once instead of on every call, which is what small depthwise and 1x1 convs need on a CPU
    (the per-setting figures of the demo's models: ``benchmarks/results/deploy.md``).

    ``check_trace=False``: TorchScript's own check traces the module a second time and raises
    'Tracing failed sanity checks!' when the two graphs differ, which is a statement about the
    tracer, not about this module's outputs; the caller checks the frozen module's output
    against eager's instead (:func:`benchmark_settings`), with tolerances it states."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
        traced = torch.jit.trace(module, x, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        frozen(x)
    return frozen


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


def placed(model: nn.Module, device: Optional[Device], name: str = "model") -> nn.Module:
    """``model`` itself when ``device`` is None, else a copy of it on ``device`` (the user's
    model never moves). A model or device that cannot run (meta) is one ValueError."""
    here = model_device(model)
    if here.type == "meta":
        raise ValueError(f"{name} is on the meta device: it has no weights to run; load real weights first")
    if device is None:
        return model
    return copy.deepcopy(model).to(real_device(device))


def real_device(device: Device, what: str = "run a model") -> torch.device:
    """``device`` as a torch device that can ``what``: a string torch does not read, or the meta
    device (no values), is one ValueError."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} must be a torch device such as 'cpu' or 'cuda' ({error})") from None
    if target.type == "meta":
        raise ValueError(f"device={device!r} cannot {what}: choose a real device such as 'cpu' or 'cuda'")
    return target


@dataclass
class SettingResult:
    """One setting's median latency over rounds (None when skipped, with the reason), its range
    over rounds (``spread_ms``: min, max), the per-round latencies and its largest absolute
    output difference from eager."""

    setting: str
    latency_ms: Optional[float] = None
    skipped: Optional[str] = None
    max_abs_diff: Optional[float] = None
    spread_ms: Optional[Tuple[float, float]] = None
    samples_ms: List[float] = field(default_factory=list)

    @property
    def spread(self) -> Optional[Spread]:
        """Median and range over rounds (one round when only a latency was given); None when skipped."""
        if self.latency_ms is None:
            return None
        if self.samples_ms:
            return Spread.of(self.samples_ms)
        return Spread(self.latency_ms, self.latency_ms, self.latency_ms, 1)


def result_ratio(numerator: SettingResult, denominator: SettingResult) -> Optional[Spread]:
    """``numerator`` latency / ``denominator`` latency (the speedup of ``denominator``): the
    figure is the ratio of the median latencies, the range that of the per-round ratios (widened
    to hold the figure) when both were measured in the same rounds; one round otherwise."""
    if numerator.latency_ms is None or denominator.latency_ms is None:
        return None
    value = numerator.latency_ms / denominator.latency_ms
    if len(numerator.samples_ms) > 1 and len(numerator.samples_ms) == len(denominator.samples_ms):
        rounds = ratio_spread(numerator.samples_ms, denominator.samples_ms)
        return Spread(value, min(rounds.low, value), max(rounds.high, value), rounds.rounds)
    return Spread(value, value, value, 1)


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
        """The fastest measured setting (lowest median)."""
        if not self.measured:
            raise ValueError("no setting was measured: every one was skipped")
        return min(self.measured, key=lambda r: r.latency_ms)

    @property
    def rounds(self) -> int:
        """Interleaved rounds behind each latency (1 when only latencies were given)."""
        return max((len(r.samples_ms) for r in self.results), default=0) or 1

    def result(self, setting: str) -> Optional[SettingResult]:
        return next((r for r in self.results if r.setting == setting), None)

    def latency(self, setting: str) -> Optional[float]:
        found = self.result(setting)
        return found.latency_ms if found is not None else None

    def to_dict(self) -> Dict:
        return {**asdict(self), "best": self.best.setting, "rounds": self.rounds}

    def header(self) -> str:
        """Input, threads, device and how each figure was measured."""
        how = (f"median of {self.rounds} interleaved rounds (min-max over rounds in brackets)" if self.rounds > 1
               else "one round: no spread measured")
        return f"Input {'x'.join(map(str, self.input_shape))}, {self.threads} thread(s), {self.device}; {how}"

    def to_markdown(self) -> str:
        lines = [f"{self.header()}; fastest: **{self.best.setting}**", "",
                 "| setting | latency ms | vs eager | max abs diff vs eager | note |", "|---|---:|---:|---:|---|"]
        eager = self.result("eager")
        for r in self.results:
            ratio = result_ratio(eager, r) if eager is not None else None
            vs = "1.00x" if r is eager and r.latency_ms else format_ratio(ratio) if ratio else ""
            diff = f"{r.max_abs_diff:.2e}" if r.max_abs_diff is not None else ""
            lat = format_ms(r.spread) if r.spread is not None else "skipped"
            lines.append(f"| {r.setting} | {lat} | {vs} | {diff} | {r.skipped or ''} |")
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


def _example(input_size: Sequence[int], device: torch.device, seed: int = 0) -> torch.Tensor:
    """A seeded random input (the same values on every device), created on ``device``."""
    if (not isinstance(input_size, (tuple, list)) or len(input_size) < 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_size)):
        raise ValueError(f"input_size={input_size!r} must be a shape of positive ints, e.g. (1, 3, 224, 224)")
    return torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(seed)).to(device)


def skip_reason(error: BaseException) -> str:
    """One line saying why a setting could not be built: the error's type and first line, plus
    the line that names the cause when the first is only a heading (TorchScript's
    'Tracing failed sanity checks!' is followed by 'ERROR: Graphs differed across invocations!')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    cause = next((line for line in lines[1:] if line.startswith("ERROR")), None)
    text = f"{lines[0]} {cause}" if cause else lines[0]
    return f"{type(error).__name__}: {text[:200]}"


@dataclass
class _Prepared:
    """One model in one setting, ready to time (``call`` None when skipped)."""

    model_index: int
    result: SettingResult
    call: Optional[Callable[[], torch.Tensor]] = None


def _prepare_checked(index: int, model: nn.Module, setting: str, x: torch.Tensor, expected: torch.Tensor,
                     rtol: float, atol: float) -> _Prepared:
    """``model`` prepared in ``setting`` and checked against eager's output, or the reason it is skipped."""
    item = _Prepared(index, SettingResult(setting))
    try:
        module, example = prepare(model, setting, x)
        with torch.inference_mode():
            got = module(example).float()
    except Exception as error:  # compile and TorchScript can fail in many ways; say which and go on
        item.result.skipped = skip_reason(error)
        return item
    item.result.max_abs_diff = float((got - expected).abs().max())
    if not torch.allclose(got, expected, rtol=rtol, atol=atol):
        item.result.skipped = f"output differs from eager by up to {item.result.max_abs_diff:.3g}"
        return item
    item.call = synchronized(lambda: module(example), x.device)
    return item


def _measure_models(models: Sequence[nn.Module], x: torch.Tensor, settings: Sequence[str], threads: int,
                    timing: Dict, rtol: float, atol: float, on_step: Callable[[str], None]) -> List[SettingsReport]:
    """Every model in every setting, interleaved (one round times each model in each setting
    once, then the next round), so that a change in machine load hits all; median and range
    over ``timing['rounds']`` rounds. ``timing``: rounds, warmup, min_run_time, measure."""
    reports = [SettingsReport(tuple(x.shape), threads, [], str(x.device)) for _ in models]
    with torch.inference_mode():  # eager outputs from copies: the models keep their mode
        expected = [copy.deepcopy(model).eval()(x).float() for model in models]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        items = []
        for setting in settings:
            for index, model in enumerate(models):
                items.append(_prepare_checked(index, model, setting, x, expected[index], rtol, atol))
                reports[index].results.append(items[-1].result)
        timed = [item for item in items if item.call is not None]
        if timed:
            measured = time_interleaved([item.call for item in timed], rounds=timing["rounds"],
                                        warmup=timing["warmup"], min_run_time=timing["min_run_time"],
                                        num_threads=threads, measure=timing.get("measure"),
                                        on_measured=lambda i: on_step(timed[i].result.setting))
            for position, item in enumerate(timed):
                spread = measured.spread(position)
                item.result.latency_ms, item.result.spread_ms = spread.median, (spread.low, spread.high)
                item.result.samples_ms = list(measured.samples[position])
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


def _check_common(threads: Optional[int], min_run_time: float, rounds: int, warmup: int) -> int:
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be an int >= 1")
    if not (isinstance(min_run_time, (int, float)) and min_run_time > 0):
        raise ValueError(f"min_run_time={min_run_time!r} must be > 0 (seconds)")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be an int >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an int >= 0")
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
    device: Optional[Device] = None,
    measure: Optional[Measure] = None,
) -> SettingsReport:
    """Measure ``model`` on a random input of ``input_size`` in each deployment setting.

    ``settings``: default eager, channels_last, fused, fused_channels_last, frozen and
    frozen_channels_last; ``compile=True`` adds ``compiled`` (slow to build on a small CPU). A
    setting that fails to build, or whose output is not allclose to eager's (``rtol``,
    ``atol``), is skipped with the reason, so the fastest (``report.best``) is always a
    correct one. All settings are timed in ``rounds`` interleaved rounds after ``warmup`` calls
    (:func:`leanconv.timing.time_interleaved`; ``measure`` replaces its per-round timing); one
    round, the default, gives no spread: pass ``rounds=3`` or more for the range.
    ``threads``: default torch's. Runs on the model's device, or on a copy on ``device``; the
    model is never changed (each setting works on a copy).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    chosen = _check_settings(settings, compile)
    threads = _check_common(threads, min_run_time, rounds, warmup)
    model = placed(model, device)
    x = _example(input_size, model_device(model))
    timing = dict(rounds=rounds, warmup=warmup, min_run_time=min_run_time, measure=measure)
    with _Steps(progress, len(chosen) * rounds, "bench") as step:
        return _measure_models([model], x, chosen, threads, timing, rtol, atol, step)[0]


def efficiency(speedup: float, mac_reduction: float) -> float:
    """Realized efficiency: measured speedup over the speedup the MACs promise
    (``original MACs / converted MACs``). 1.0: as much faster as the MAC count says."""
    for name, value in (("speedup", speedup), ("mac_reduction", mac_reduction)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} must be a finite number > 0")
    return speedup / mac_reduction


def _efficiency_text(spread: Optional[Spread], mac_reduction: float) -> str:
    """A realized efficiency with its range over rounds ('skipped' without a speedup); only the
    range when the speedup is within noise, since then no single figure is meaningful."""
    if spread is None:
        return "skipped"
    e = spread.scaled(mac_reduction)
    if e.rounds < 2:
        return f"{e.median:.2f}"
    if spread.straddles(1.0):
        return f"{e.low:.2f}-{e.high:.2f}"
    return f"{e.median:.2f} ({e.low:.2f}-{e.high:.2f})"


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
        """Each model in its own fastest setting: original best latency / converted best (medians)."""
        return self.original.best.latency_ms / self.converted.best.latency_ms

    @property
    def speedup_spread(self) -> Spread:
        """The deployed speedup (:attr:`speedup`) with its range: original best / converted best in each round."""
        return result_ratio(self.original.best, self.converted.best)

    @property
    def within_noise(self) -> bool:
        """True when the deployed speedup's range over rounds straddles 1: no reliable winner."""
        return self.speedup_spread.straddles(1.0)

    @property
    def efficiency(self) -> float:
        """Realized efficiency = speedup / MAC reduction, both models deployed at their best."""
        return efficiency(self.speedup, self.mac_reduction)

    @property
    def speedup_text(self) -> str:
        """``'1.52x (1.40-1.61)'``, or ``'0.90-1.30x: within noise'`` when the range straddles 1."""
        return format_ratio(self.speedup_spread)

    @property
    def efficiency_text(self) -> str:
        """The realized efficiency with its range over rounds."""
        return _efficiency_text(self.speedup_spread, self.mac_reduction)

    def latency_text(self, side: str) -> str:
        """``side`` ('original' or 'converted') at its best: ``'0.860 (0.840-0.910) ms (frozen)'``."""
        if side not in ("original", "converted"):
            raise ValueError(f"side={side!r} must be 'original' or 'converted'")
        best = getattr(self, side).best
        return f"{format_ms(best.spread)} ms ({best.setting})"

    def per_setting(self) -> List[Dict]:
        """Per setting: both latencies, the speedup in that same setting (median of per-round
        ratios, with its range) and its efficiency."""
        rows = []
        for o, c in zip(self.original.results, self.converted.results):
            row = {"setting": o.setting, "original_ms": o.latency_ms, "converted_ms": c.latency_ms,
                   "speedup": None, "speedup_range": None, "within_noise": None, "efficiency": None,
                   "note": o.skipped or c.skipped}
            ratio = result_ratio(o, c)
            if ratio is not None:
                row["speedup"] = ratio.median
                row["speedup_range"] = (ratio.low, ratio.high)
                row["within_noise"] = ratio.straddles(1.0)
                row["efficiency"] = efficiency(row["speedup"], self.mac_reduction)
            rows.append(row)
        return rows

    def to_dict(self) -> Dict:
        spread = self.speedup_spread
        return {"original": self.original.to_dict(), "converted": self.converted.to_dict(),
                "original_macs": self.original_macs, "converted_macs": self.converted_macs,
                "mac_reduction": self.mac_reduction, "speedup": self.speedup, "efficiency": self.efficiency,
                "speedup_range": [spread.low, spread.high], "within_noise": self.within_noise,
                "rounds": spread.rounds, "original_best": self.original.best.setting,
                "converted_best": self.converted.best.setting, "per_setting": self.per_setting(), "meta": self.meta}

    def _row(self, o: SettingResult, c: SettingResult) -> str:
        ratio = result_ratio(o, c)
        cells = [o.setting, format_ms(o.spread) if o.spread else "skipped",
                 format_ms(c.spread) if c.spread else "skipped", format_ratio(ratio) if ratio else "skipped",
                 _efficiency_text(ratio, self.mac_reduction), o.skipped or c.skipped or ""]
        return "| " + " | ".join(cells) + " |"

    def closing(self) -> str:
        """The deployed comparison in one sentence; no confident figure when it is within noise."""
        o, c = self.original.best, self.converted.best
        spread = self.speedup_spread
        head = (f"Deployed (each at its fastest): original **{o.setting}** {format_ms(o.spread)} ms, "
                f"converted **{c.setting}** {format_ms(c.spread)} ms: ")
        if spread.rounds < 2:
            return head + (f"speedup **{self.speedup:.2f}x**, realized efficiency **{self.efficiency:.2f}** "
                           f"(= speedup / MAC reduction; one round, no spread measured).")
        if self.within_noise:
            return head + (f"speedup **{self.speedup_text}** over {spread.rounds} interleaved rounds: the two "
                           f"differ by less than the run-to-run noise, so no speedup or realized efficiency is "
                           f"claimed (realized efficiency range {self.efficiency_text}).")
        return head + (f"speedup **{spread.median:.2f}x** ({spread.low:.2f}-{spread.high:.2f} over {spread.rounds} "
                       f"interleaved rounds), realized efficiency **{self.efficiency_text}** "
                       f"(= speedup / MAC reduction).")

    def to_markdown(self) -> str:
        o = self.original
        lines = [f"{o.header()}. MACs {self.original_macs:,} -> {self.converted_macs:,} "
                 f"({self.mac_reduction:.2f}x fewer).", "",
                 "| setting | original ms | converted ms | speedup | realized efficiency | note |",
                 "|---|---:|---:|---:|---:|---|"]
        lines += [self._row(oc, cc) for oc, cc in zip(self.original.results, self.converted.results)]
        lines += ["", self.closing()]
        return "\n".join(lines) + "\n"


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Conv + linear MACs of ``model`` at ``input_size`` (leanconv.profile, on the meta device)."""
    return int(profile(model, tuple(input_size)).total_macs)


def _placed_pair(original: nn.Module, converted: nn.Module, device: Optional[Device]) -> Tuple[nn.Module, nn.Module]:
    """Both models on one device: ``device``'s copies, or as they are when they already share one."""
    for name, model in (("original", original), ("converted", converted)):
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name}={type(model).__name__} must be an nn.Module")
    original, converted = placed(original, device, "original"), placed(converted, device, "converted")
    if device is None and model_device(original) != model_device(converted):
        raise ValueError(f"original is on {model_device(original)} and converted on {model_device(converted)}: "
                         f"pass device= to measure both on one device")
    return original, converted


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
    device: Optional[Device] = None,
    measure: Optional[Measure] = None,
) -> EfficiencyReport:
    """Measure ``original`` and ``converted`` in every setting (all interleaved, ``rounds`` rounds)
    and report speedup / MAC reduction, with the speedup's range from per-round ratios ("within
    noise" when it straddles 1). MACs come from ``leanconv.profile`` on the meta device. Both
    run on the original's device (the converted model must be on the same one) or on copies on
    ``device``; neither model is changed. Options as in :func:`benchmark_settings`.
    """
    original, converted = _placed_pair(original, converted, device)
    chosen = _check_settings(settings, compile)
    threads = _check_common(threads, min_run_time, rounds, warmup)
    x = _example(input_size, model_device(original))
    macs = (count_macs(original, x.shape), count_macs(converted, x.shape))
    if not all(macs):
        raise ValueError(f"original and converted must both have conv/linear MACs at {tuple(x.shape)}, got {macs}")
    timing = dict(rounds=rounds, warmup=warmup, min_run_time=min_run_time, measure=measure)
    with _Steps(progress, 2 * len(chosen) * rounds, "realized efficiency") as step:
        o, c = _measure_models([original, converted], x, chosen, threads, timing, rtol, atol, step)
    meta = {"torch": torch.__version__, "threads": threads, "rounds": rounds, "min_run_time": min_run_time,
            "device": str(x.device), "cpu": platform.processor() or platform.machine(),
            "mkldnn": torch.backends.mkldnn.is_available()}
    return EfficiencyReport(o, c, macs[0], macs[1], meta)


__all__ = ["DEFAULT_SETTINGS", "EfficiencyReport", "SETTINGS", "SettingResult", "SettingsReport", "benchmark_settings",
           "count_macs", "efficiency", "frozen_module", "measure_latency", "model_device", "placed", "prepare", "real_device", "realized_efficiency",
           "result_ratio", "skip_reason"]
