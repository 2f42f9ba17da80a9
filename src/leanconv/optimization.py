"""The whole path a user takes, in one call: convert, recover, deploy, measure, show.

:func:`optimize` takes a trained model and its data and

1. measures the original (test accuracy, params, MACs, latency in its fastest deployment form);
2. tries a few candidate conversions (ranks or MAC budgets around the one asked for, plus a
   measured-latency budget when a speedup is the target), each with the least-squares refit
   on calibration images, and measures each the same way;
3. picks one: the rank or MAC budget asked for, or, for ``target_speedup``, the most accurate
   candidate whose *measured* speedup reaches it (the fastest one, flagged, when none does);
4. distills the original into it for a few epochs (:func:`leanconv.train.distill`);
5. measures the realized efficiency (speedup / MAC reduction) at each batch size, each model
   in its own fastest deployment setting (:func:`leanconv.bench.realized_efficiency`);
6. writes the weights, the plan, ``report.md``, ``summary.json`` and plots into a new folder.

The input model is never changed.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from leanconv._validate import check_positive_int

SWEEP_RANKS = (1, 2, 4)
SWEEP_FRACTIONS = (0.15, 0.25, 0.4, 0.6)


@dataclass
class Candidate:
    """One conversion tried: what was asked, what it costs, how it does after the refit."""

    label: str
    options: Dict[str, Any]  # the convert() keyword arguments that define it
    macs: int
    params: int
    accuracy: float
    latency_ms: float  # batch 1, in its fastest deployment setting
    setting: str
    converted_layers: int
    model: Optional[nn.Module] = field(default=None, repr=False)
    plan: Optional[Dict[str, Any]] = field(default=None, repr=False)
    conversion: Optional[Any] = field(default=None, repr=False)  # the ConversionResult

    def row(self) -> Dict[str, Any]:
        return {"label": self.label, "options": self.options, "macs": self.macs, "params": self.params,
                "accuracy": self.accuracy, "latency_ms": self.latency_ms, "setting": self.setting,
                "converted_layers": self.converted_layers}


@dataclass
class ModelStats:
    """Accuracy, size and deployed latency of one model."""

    accuracy: float
    params: int
    macs: int
    latency_ms: float
    setting: str


@dataclass
class OptimizeResult:
    """Everything :func:`optimize` measured, and the converted, distilled model."""

    model: nn.Module
    plan: Dict[str, Any]
    original: ModelStats
    candidates: List[Candidate]
    chosen: Candidate
    distilled_accuracy: float
    efficiency: Dict[int, Any]  # batch size -> leanconv.bench.EfficiencyReport
    distill_history: Optional[Any] = None
    notes: List[str] = field(default_factory=list)
    layer_latency: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # path -> (dense ms, converted ms)
    out: Optional[Path] = None

    @property
    def converted(self) -> ModelStats:
        one = self.efficiency[min(self.efficiency)]
        return ModelStats(self.distilled_accuracy, self.chosen.params, self.chosen.macs,
                          one.converted.best.latency_ms, one.converted.best.setting)

    def summary_rows(self) -> List[Tuple[str, str, str]]:
        """(what, original, converted) rows for the closing table."""
        o, c = self.original, self.converted
        rows = [
            ("test accuracy", f"{o.accuracy:.2%}", f"{self.chosen.accuracy:.2%} refit -> {c.accuracy:.2%} distilled"),
            ("params", f"{o.params:,}", f"{c.params:,} ({c.params / o.params:.2f}x)"),
            ("MACs", f"{o.macs:,}", f"{c.macs:,} ({o.macs / c.macs:.2f}x fewer)"),
        ]
        for batch, report in sorted(self.efficiency.items()):
            rows.append((f"latency, batch {batch}",
                         f"{report.original.best.latency_ms:.3f} ms ({report.original.best.setting})",
                         f"{report.converted.best.latency_ms:.3f} ms ({report.converted.best.setting})"))
            rows.append((f"speedup / realized efficiency, batch {batch}", "",
                         f"{report.speedup:.2f}x / {report.efficiency:.2f}"))
        return rows

    def to_dict(self) -> Dict[str, Any]:
        return {
            "original": self.original.__dict__, "chosen": self.chosen.row(),
            "candidates": [c.row() for c in self.candidates],
            "distilled_accuracy": self.distilled_accuracy,
            "efficiency": {str(b): r.to_dict() for b, r in self.efficiency.items()},
            "distill": self.distill_history.to_dict() if self.distill_history is not None else None,
            "notes": self.notes,
            "layer_latency_ms": {p: {"dense": d, "converted": c} for p, (d, c) in self.layer_latency.items()},
        }

    def to_markdown(self, title: str = "leanconv optimize") -> str:
        lines = [f"# {title}", ""]
        lines += ["| | original | converted |", "|---|---:|---:|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.summary_rows()]
        lines += ["", "## Candidates tried (after the least-squares refit, before distillation)", "",
                  "| candidate | converted layers | MACs | params | accuracy | latency, batch 1 | setting |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for c in self.candidates:
            mark = " **(chosen)**" if c is self.chosen else ""
            lines.append(f"| {c.label}{mark} | {c.converted_layers} | {c.macs:,} | {c.params:,} | {c.accuracy:.2%} | "
                         f"{c.latency_ms:.3f} ms | {c.setting} |")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        lines += ["", "## Per layer (chosen candidate)", "", self.chosen.conversion.to_markdown()]
        if self.distill_history is not None:
            lines += ["## Distillation", "", self.distill_history.to_markdown()]
        for batch, report in sorted(self.efficiency.items()):
            lines += [f"## Deployment, batch {batch}", "", report.to_markdown()]
        lines += ["## Files", "", "- `model.pt`: the converted, distilled weights (state_dict); rebuild with "
                  "`leanconv.apply_plan(build_model(), 'plan.json')` then `load_state_dict`",
                  "- `plan.json`: which layers became which kind, with which ranks",
                  "- `summary.json`: every number above", "- `candidates.png`, `layers.png`: the plots below", "",
                  "![candidates](candidates.png)", "", "![layers](layers.png)", ""]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers


def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode, restored afterwards) on ``(image, label)`` items."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in DataLoader(data, batch_size=batch_size):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("the test data is empty")
    return correct / total


def calibration_batches(data: Dataset, images: int, batch_size: int = 64, seed: int = 0) -> List[torch.Tensor]:
    """``images`` training inputs chosen by a seeded permutation, in batches (no labels)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    inputs = torch.stack([data[i][0] for i in order])
    return list(inputs.split(batch_size))


def stem_paths(model: nn.Module, in_channels: int) -> List[str]:
    """The first conv reading the image (``in_channels`` channels): MobileNet and its followers
    keep it dense, since a few-channel input gives a separable form almost nothing to share."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return [path] if module.in_channels == in_channels else []
    return []


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _deployed(model: nn.Module, input_size: Sequence[int], min_run_time: float) -> Tuple[float, str]:
    from leanconv.bench import benchmark_settings

    best = benchmark_settings(model, input_size, min_run_time=min_run_time).best
    return best.latency_ms, best.setting


def _candidate_grid(rank, mac_budget, target_speedup, sweep: bool) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, convert kwargs) for every candidate to try; the one asked for comes first."""
    grid: List[Tuple[str, Dict[str, Any]]] = []
    if rank is not None:
        grid.append((f"rank {rank}", {"rank": rank}))
        grid += [(f"rank {r}", {"rank": r}) for r in (SWEEP_RANKS if sweep else ()) if r != rank]
    else:
        fractions = [mac_budget] if mac_budget is not None else []
        fractions += [f for f in (SWEEP_FRACTIONS if sweep or mac_budget is None else ()) if f not in fractions]
        grid += [(f"{f:.0%} of the MACs", {"mac_fraction": f}) for f in fractions]
        if target_speedup is not None:
            grid.append((f"latency budget (1/{target_speedup:g} of the original)", {"speedup": target_speedup}))
    return grid


def _choose(candidates: List[Candidate], original: ModelStats, target_speedup: Optional[float],
            notes: List[str]) -> Candidate:
    if target_speedup is None:
        return candidates[0]  # the rank or MAC budget asked for
    fast = [c for c in candidates if original.latency_ms / c.latency_ms >= target_speedup]
    if fast:
        return max(fast, key=lambda c: (c.accuracy, -c.latency_ms))
    fastest = min(candidates, key=lambda c: c.latency_ms)
    notes.append(f"no candidate reached the target speedup {target_speedup:g}x at batch 1 on this machine; "
                 f"the fastest ({fastest.label}: {original.latency_ms / fastest.latency_ms:.2f}x) was kept")
    return fastest


# --------------------------------------------------------------------------------------------- main


def optimize(
    model: nn.Module,
    data: Any,
    *,
    to: str = "dsconv",
    rank: Optional[int] = None,
    mac_budget: Optional[float] = None,
    target_speedup: Optional[float] = None,
    epochs: int = 3,
    lr: float = 1e-3,
    alpha: float = 0.5,
    calib_images: int = 256,
    exclude: Optional[Sequence[str]] = None,
    keep_stem: bool = True,
    batch_sizes: Sequence[int] = (1, 16),
    sweep: bool = True,
    out: Optional[Union[str, Path]] = None,
    force: bool = False,
    title: str = "leanconv optimize",
    min_run_time: float = 0.2,
    progress: bool = True,
    seed: int = 0,
) -> OptimizeResult:
    """Convert ``model`` to kind ``to``, recover its accuracy, deploy and measure it (see the module doc).

    ``data``: a :class:`leanconv.data.DataSplits` (``leanconv.data.load_data('digits')``, a
    CIFAR-10 or class-folder path). Choose with one of ``rank`` (fixed rank everywhere),
    ``mac_budget`` (a fraction in (0, 1] of the original MACs) or ``target_speedup`` (measured,
    batch 1). ``epochs`` of distillation (0 skips it). ``keep_stem`` leaves the first conv on
    the image dense. ``lr``/``alpha``: distillation's Adam learning rate and weight of the
    teacher's soft targets against the labels (0.5: measured on the digits CNN, 3 epochs at
    lr 3e-3: 98.3% with alpha 0.5 vs 97.8% with 0.9, the original at 98.3%). ``out``: a folder to write (must not exist unless ``force``); written all
    at once, so an interrupted run leaves nothing half-written.
    """
    from leanconv._files import check_new_folder
    from leanconv.bench import count_macs, realized_efficiency
    from leanconv import convert

    if sum(v is not None for v in (rank, mac_budget, target_speedup)) != 1:
        raise ValueError("pass exactly one of rank, mac_budget and target_speedup")
    if rank is not None:
        check_positive_int(rank, "rank")
    if mac_budget is not None and not 0 < mac_budget <= 1:
        raise ValueError(f"mac_budget={mac_budget!r} must be a fraction of the original MACs in (0, 1]")
    if target_speedup is not None and not (target_speedup > 0 and math.isfinite(target_speedup)):
        raise ValueError(f"target_speedup={target_speedup!r} must be a number > 0")
    if epochs < 0:
        raise ValueError(f"epochs={epochs!r} must be >= 0")
    for batch in batch_sizes:
        check_positive_int(batch, "batch_sizes")
    if out is not None:
        out = check_new_folder(out, force)  # refuse before any work
    input_size = data.input_size(1)
    say = _Say(progress)

    say(f"measuring the original on {data.name} ({len(data.test)} test images)")
    original_model = copy.deepcopy(model).eval()  # every step below reads this copy only
    latency, setting = _deployed(original_model, input_size, min_run_time)
    original = ModelStats(evaluate(original_model, data.test), _params(original_model),
                          count_macs(original_model, input_size), latency, setting)
    calib = calibration_batches(data.train, calib_images, seed=seed)
    skip = list(exclude or []) + (stem_paths(original_model, input_size[1]) if keep_stem else [])

    candidates: List[Candidate] = []
    notes: List[str] = []
    if skip:
        notes.append(f"kept dense by request or as the stem: {', '.join(skip)}")
    for label, options in _candidate_grid(rank, mac_budget, target_speedup, sweep):
        say(f"candidate {label}: convert, refit on {calib_images} images, measure")
        kwargs = dict(options)
        if "mac_fraction" in kwargs:
            kwargs = {"mac_budget": int(original.macs * kwargs.pop("mac_fraction"))}
        elif "speedup" in kwargs:
            kwargs = {"latency_budget": _eager_ms(original_model, input_size, min_run_time) / kwargs.pop("speedup")}
        try:
            result = convert(original_model, to=to, input_size=input_size, calib=calib, exclude=skip, **kwargs)
        except ValueError as error:  # e.g. a budget below what the lowest ranks reach
            notes.append(f"candidate {label} skipped: {error}")
            continue
        converted = result.model.eval()
        latency, setting = _deployed(converted, input_size, min_run_time)
        candidates.append(Candidate(label, options, count_macs(converted, input_size), _params(converted),
                                    evaluate(converted, data.test), latency, setting,
                                    sum(r.converted for r in result.layers), converted, result.plan, result))
    if not candidates:
        raise ValueError("no candidate conversion was possible: " + "; ".join(notes))
    chosen = _choose(candidates, original, target_speedup, notes)

    student = copy.deepcopy(chosen.model)
    history = None
    if epochs:
        from leanconv.train import distill

        say(f"distilling the original into '{chosen.label}' for {epochs} epoch(s)")
        history = distill(student, original_model, data.train, epochs=epochs, lr=lr, alpha=alpha, seed=seed,
                          progress=progress)
    distilled_accuracy = evaluate(student, data.test)
    efficiency = {}
    for batch in batch_sizes:
        say(f"measuring realized efficiency at batch {batch}")
        efficiency[batch] = realized_efficiency(original_model, student.eval(), data.input_size(batch),
                                                min_run_time=min_run_time)
    say("timing each converted layer against its dense original")
    result = OptimizeResult(student, chosen.plan, original, candidates, chosen, distilled_accuracy, efficiency,
                            history, notes, layer_latency(original_model, chosen, input_size))
    if out is not None:
        write_outputs(result, out, force, title)
        result.out = Path(out)
    return result


def layer_latency(original: nn.Module, chosen: Candidate, input_size: Sequence[int]) -> Dict[str, Tuple[float, float]]:
    """Per converted layer: (dense ms, converted ms) timed alone at its input shape (cached)."""
    from leanconv.conversion.latency import LatencyCache
    from leanconv.conversion.surgery import _input_sizes, build_module, describe

    sizes = _input_sizes(original, input_size)
    cache = LatencyCache()
    timings = {}
    for path, entry in chosen.plan["layers"].items():
        conv = original.get_submodule(path)
        shape = (input_size[0], conv.in_channels, *sizes[path])
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["options"].items()}
        dense = cache.latency(describe(conv, "dense", {}), build_module(conv, "dense", {}), shape)
        converted = cache.latency(describe(conv, entry["kind"], options), build_module(conv, entry["kind"], options),
                                  shape)
        timings[path] = (dense, converted)
    cache.save()
    return timings


def _eager_ms(model: nn.Module, input_size: Sequence[int], min_run_time: float) -> float:
    """Batch-``input_size`` eager latency: what per-layer timings in a latency budget add up to."""
    from leanconv.bench import measure_latency

    return measure_latency(model, torch.randn(tuple(input_size)), min_run_time=min_run_time,
                           num_threads=torch.get_num_threads())


def write_outputs(result: OptimizeResult, out: Union[str, Path], force: bool, title: str) -> None:
    """model.pt, plan.json, summary.json, report.md and the plots, all at once."""
    from leanconv._files import staged_folder
    from leanconv import save_plan
    from leanconv.plots import plot_candidates, plot_layers

    with staged_folder(out, force) as staging:
        torch.save(result.model.state_dict(), staging / "model.pt")
        save_plan(result.plan, staging / "plan.json")
        (staging / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        plot_candidates(result, staging / "candidates.png")
        plot_layers(result, staging / "layers.png")
        (staging / "report.md").write_text(result.to_markdown(title))


class _Say:
    """Step messages on stderr (rich), so stdout keeps only the results."""

    def __init__(self, enabled: bool) -> None:
        import time

        self.clock = time.perf_counter
        self.start = self.clock()
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True)

    def __call__(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[bold cyan]leanconv[/bold cyan] [dim]{self.clock() - self.start:6.1f}s[/dim] {message}")


__all__ = ["Candidate", "ModelStats", "OptimizeResult", "calibration_batches", "evaluate", "layer_latency",
           "optimize", "stem_paths", "write_outputs"]
