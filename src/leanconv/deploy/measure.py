"""Measure models on every target and precision, and the honest speedup.

:func:`measure_targets` deploys each model on each (target, precision) that can run here,
checks its output against fp32 PyTorch eager (a deployment beyond its precision's tolerance is
reported as wrong and not timed), then times every deployment in interleaved rounds with the
one timer (:func:`leanconv.timing.time_interleaved`). :class:`TargetsReport` marks where each
model is fastest and computes the honest speedup of a conversion: the original at *its* best
over the allowed targets and precisions against the conversion at its best, per round, with
the range over rounds; the fp32-eager figure is given beside it, labelled.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv.deploy.target import (Deployed, check_precision, cpu_flags, example_input,
                                    first_output, get_target, output_difference, reference_output, registered,
                                    tolerance_problem)
from leanconv.data.batches import input_batches
from leanconv.timing import Measure, Spread, format_ms, format_ratio, ratio_spread, synchronized, time_interleaved

EAGER = "fp32 eager (as written)"
DEVICE_PRECISIONS = {"cpu": ("fp32", "bf16", "int8"), "cuda": ("fp32", "tf32", "bf16", "fp16", "int8")}
"""The precisions measured by default on each device type (tf32 and fp16 are GPU formats)."""


@dataclass
class TargetRow:
    """One model on one target and precision: measured, wrong, failed or skipped (with the reason)."""

    model: str
    target: str
    precision: str
    ran: str = ""
    status: str = "skipped"  # 'ok', 'wrong' (output beyond tolerance), 'failed' (could not build), 'skipped'
    reason: str = ""
    difference: Optional[float] = None  # relative, against fp32 PyTorch eager
    accuracy: Optional[float] = None  # top-1 on the validation data given (``val``), in this precision
    samples: List[float] = field(default_factory=list)  # ms per round
    note: str = ""

    @property
    def latency(self) -> Optional[Spread]:
        return Spread.of(self.samples) if self.samples else None


@dataclass
class TargetsReport:
    """Every row, and what was measured on (threads, CPU flags, torch version)."""

    rows: List[TargetRow]
    input_size: List[int]
    threads: int
    device: str
    macs: Dict[str, int] = field(default_factory=dict)
    machine: Dict[str, Any] = field(default_factory=dict)

    def measured(self, model: str) -> List[TargetRow]:
        return [r for r in self.rows if r.model == model and r.status == "ok" and r.target != EAGER]

    def best(self, model: str) -> TargetRow:
        """The fastest measured row of ``model`` (median latency over rounds)."""
        rows = self.measured(model)
        if not rows:
            raise ValueError(f"model {model!r} has no measured target")
        return min(rows, key=lambda r: r.latency.median)  # type: ignore[union-attr]

    def eager(self, model: str) -> Optional[TargetRow]:
        return next((r for r in self.rows if r.model == model and r.target == EAGER and r.samples), None)

    def speedup(self, original: str, converted: str) -> Spread:
        """Honest speedup: ``original`` at its best against ``converted`` at its best, per round."""
        return ratio_spread(self.best(original).samples, self.best(converted).samples)

    def eager_speedup(self, original: str, converted: str) -> Optional[Spread]:
        """Both in fp32 PyTorch eager as written (the figure nobody deploys; shown labelled)."""
        a, b = self.eager(original), self.eager(converted)
        return ratio_spread(a.samples, b.samples) if a and b else None

    def efficiency(self, original: str, converted: str) -> Optional[Spread]:
        """Realized efficiency: the honest speedup over the MAC reduction."""
        if original not in self.macs or converted not in self.macs or not self.macs[converted]:
            return None
        return self.speedup(original, converted).scaled(self.macs[original] / self.macs[converted])

    def to_markdown(self) -> str:
        lines = [f"input {tuple(self.input_size)}, {self.threads} thread(s), {self.device}; "
                 "latency in ms: median (range over rounds); difference: relative to fp32 PyTorch eager", "",
                 "| model | target | precision (ran) | latency ms | difference | accuracy | note |",
                 "|---|---|---|---:|---:|---:|---|"]
        fastest = {m: self.best(m) for m in dict.fromkeys(r.model for r in self.rows) if self.measured(m)}
        for r in self.rows:
            mark = " **fastest**" if fastest.get(r.model) is r else ""
            latency = format_ms(r.latency) if r.latency else r.status
            diff = "-" if r.difference is None else f"{r.difference:.2e}"
            ran = r.precision if r.ran in ("", r.precision) else f"{r.precision} ({r.ran})"
            accuracy = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
            lines.append(f"| {r.model} | {r.target} | {ran} | {latency}{mark} | {diff} | {accuracy} | {r.reason or r.note} |")
        return "\n".join(lines) + "\n"

    def summary(self, original: str, converted: str) -> str:
        """Where each is fastest and the honest speedup (the eager figure beside it, labelled)."""
        a, b = self.best(original), self.best(converted)
        text = (f"{original} is fastest on {a.target} {a.ran or a.precision} ({a.latency.median:.3f} ms), "  # type: ignore[union-attr]
                f"{converted} on {b.target} {b.ran or b.precision} ({b.latency.median:.3f} ms): "  # type: ignore[union-attr]
                f"speedup vs dense at its best {format_ratio(self.speedup(original, converted))}")
        efficiency = self.efficiency(original, converted)
        if efficiency is not None and self.speedup(original, converted).straddles(1.0):
            text += ", realized efficiency: not measurable (the speedup is within noise)"
        elif efficiency is not None:
            text += f", realized efficiency {format_ratio(efficiency).replace('x', '')}"
        eager = self.eager_speedup(original, converted)
        if eager is not None:
            text += f" (both in {EAGER}: {format_ratio(eager)})"
        return text

    def to_dict(self) -> Dict[str, Any]:
        return {"input_size": self.input_size, "threads": self.threads, "device": self.device, "macs": self.macs,
                "machine": self.machine, "rows": [{**asdict(r), "latency": asdict(r.latency) if r.latency else None}
                                                   for r in self.rows]}


def _names(asked: Optional[Sequence[str]], default: Sequence[str], name: str) -> List[str]:
    if asked is None:
        return list(default)
    if isinstance(asked, str) or not all(isinstance(a, str) for a in asked) or not asked:
        raise ValueError(f"{name}={asked!r} must be a non-empty list of names")
    return list(asked)


def _plan_rows(labels: Sequence[str], targets: List[str], precisions: List[str], device: str,
               explicit: bool) -> List[TargetRow]:
    """A row per (model, target, precision); the ones that cannot run here skipped with why
    (an error instead when the user named the targets or precisions)."""
    rows = []
    for target in targets:
        entry = get_target(target)
        if explicit and not set(precisions) & set(entry.precisions):
            raise ValueError(f"target {target!r} has none of precisions={precisions} (it runs {', '.join(entry.precisions)})")
        for precision in [p for p in precisions if p in entry.precisions]:
            why = entry.missing() or entry.unsupported(precision, device)
            if why is not None and explicit:
                raise ValueError(f"target {target!r} with precision {precision!r} cannot run here: {why}")
            for label in labels:
                rows.append(TargetRow(label, target, precision, reason=why or ""))
    return rows


def _build(row: TargetRow, model: nn.Module, example: torch.Tensor, reference: torch.Tensor,
           calib: Optional[List[torch.Tensor]], threads: int) -> Optional[Deployed]:
    """Deploy one row's model and check its output (the row says what went wrong)."""
    try:
        deployed = get_target(row.target).build(model, example, row.precision, calib, threads)
        row.ran, row.note = deployed.ran, deployed.note
        row.difference = output_difference(deployed(example), reference)
    except Exception as error:  # a runtime that cannot take this model is a row, not a crash
        row.status, row.reason = "failed", _first_line(error)
        return None
    problem = tolerance_problem(row.difference, row.precision)
    if problem is not None:
        row.status, row.reason = "wrong", problem
        return None
    row.status = "ok"
    return deployed


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def measure_targets(models: Mapping[str, nn.Module], input_size: Sequence[int], *,
                    targets: Optional[Sequence[str]] = None, precisions: Optional[Sequence[str]] = None,
                    calib: Any = None, device: Optional[str] = None, threads: int = 1,
                    rounds: int = 3, warmup: int = 3, min_run_time: float = 0.2, eager: bool = True, val: Any = None,
                    measure: Optional[Measure] = None, progress: Optional[Callable[[str], None]] = None) -> TargetsReport:
    """Every model in ``models`` (label -> module) on every target and precision, timed interleaved.

    ``targets``/``precisions``: None = every registered default target and every precision,
    skipping (with the reason) what cannot run here; named explicitly, one that cannot run is
    an error. ``calib``: data for int8 (any form of :mod:`leanconv.data.batches`; the example
    input otherwise). Outputs are checked, and
    latency timed, on the first validation batch, else a calibration batch of ``input_size``,
    else a seeded random input. ``eager`` adds each
    model as written in fp32 eager, the labelled baseline. ``val``: labelled data (any form of
    :mod:`leanconv.data.batches`) for top-1 accuracy per deployment, since bf16 and int8 change
    it; it is fed in batches of ``input_size[0]`` (the shape each runtime was built for). Models
    are not changed.
    """
    from leanconv.analysis import profile

    explicit = targets is not None or precisions is not None
    targets = _names(targets, [n for n, t in registered().items() if t.default], "targets")
    device = device or "cpu"
    native = DEVICE_PRECISIONS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    precisions = [check_precision(p) for p in _names(precisions, native, "precisions")]
    rows = _plan_rows(list(models), targets, precisions, device, explicit)
    calib = None if calib is None else input_batches(calib, "calib")
    val_batches = _val_batches(val, input_size) if val is not None else []
    example = _example(input_size, device, calib, val_batches)
    calls, timed = [], []
    for label, model in models.items():
        reference = reference_output(model, example)
        if eager:
            rows.append(TargetRow(label, EAGER, "fp32", "fp32", "ok", note="unfused, NCHW"))
            calls.append(_eager_call(model, example))
            timed.append(rows[-1])
        for row in [r for r in rows if r.model == label and not r.reason and r.status == "skipped"]:
            if progress:
                progress(f"deploy {label} on {row.target} {row.precision}")
            deployed = _build(row, model, example, reference, calib, threads)
            if deployed is not None and val_batches:
                row.accuracy = accuracy(deployed, val_batches)
            if deployed is not None:
                calls.append(synchronized(lambda d=deployed: d(example), torch.device(device)))
                timed.append(row)
    interleaved = time_interleaved(calls, rounds=rounds, warmup=warmup, min_run_time=min_run_time,
                                   num_threads=threads, measure=measure)
    for index, row in enumerate(timed):
        row.samples = interleaved.samples[index]
    macs = {label: profile(m, tuple(input_size)).total_macs for label, m in models.items()}
    machine = {"torch": torch.__version__, "cpu_flags": cpu_flags()}
    return TargetsReport(rows, list(input_size), threads, device, macs, machine)


def _example(input_size: Sequence[int], device: str, calib: Optional[List[torch.Tensor]],
             val_batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The input every deployment is checked and timed on: real data where there is some (a
    validation batch, else a calibration batch of the right shape), since int8 ranges calibrated
    on real inputs clip a random one; a seeded random input otherwise."""
    if val_batches:
        return val_batches[0][0].to(device)
    fitting = [b for b in calib or [] if tuple(b.shape) == tuple(input_size)]
    return fitting[0].to(device) if fitting else example_input(input_size, device)


def _val_batches(val: Any, input_size: Sequence[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Labelled batches of exactly ``input_size[0]`` images (the remainder dropped)."""
    from leanconv.data.batches import labelled_batches

    pairs = [(x, y) for x, y in labelled_batches(val, "val") if y is not None]
    if not pairs:
        raise ValueError("val holds no labels: give (images, labels) pairs, a labelled DataLoader or dataset")
    images, labels = torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
    batch = input_size[0]
    if images.shape[1:] != tuple(input_size[1:]):
        raise ValueError(f"val images have shape {tuple(images.shape[1:])}, input_size needs {tuple(input_size[1:])}")
    count = len(images) // batch * batch
    if count == 0:
        raise ValueError(f"val holds {len(images)} images, fewer than one batch of {batch}")
    return list(zip(images[:count].split(batch), labels[:count].split(batch)))


def accuracy(deployed: Deployed, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``deployed`` on labelled batches (its output's argmax over dim 1)."""
    correct = total = 0
    for x, y in batches:
        predicted = deployed(x).argmax(1).cpu()
        correct += int((predicted == y.cpu()).sum())
        total += len(y)
    return correct / total


def _eager_call(model: nn.Module, example: torch.Tensor) -> Callable[[], Any]:
    work = copy.deepcopy(model).float().eval().to(example.device)

    def call() -> Any:
        with torch.no_grad():
            return first_output(work(example))

    return synchronized(call, example.device)


__all__ = ["DEVICE_PRECISIONS", "EAGER", "TargetRow", "TargetsReport", "accuracy", "measure_targets"]
