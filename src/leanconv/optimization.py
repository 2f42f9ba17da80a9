"""The whole path a user takes, in one call: convert, recover, deploy, measure, show.

:func:`optimize` takes a trained model and its data and

1. measures the original (test accuracy, params, MACs, latency in its fastest deployment form);
2. tries a few candidate conversions (ranks or MAC fractions around the one asked for, plus a
   measured-latency budget when a speedup is the target), each with the least-squares refit
   on calibration images, and measures each the same way (a :class:`Trial` each);
3. picks one: the rank or MAC fraction asked for, or, for ``target_speedup``, the most accurate
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
from torch.utils.data import Dataset

from leanconv.analysis.counting import model_device
from leanconv._modes import evaluating
from leanconv._files import check_new_folder, staged_folder
from leanconv._validate import check_positive_int, torch_device
from leanconv.bench import benchmark_settings, count_macs, measure_latency, realized_efficiency
from leanconv.timing import format_ratio
from leanconv.conversion.clock import remember_dense
from leanconv.conversion.latency import LatencyCache, describe
from leanconv.conversion.pipeline import convert, input_sizes, stem_path
from leanconv.conversion.plan import AUTO, Plan, save_plan
from leanconv.conversion.surgery import build_module
from leanconv.data.batches import check_batch, first_input, iter_batches, labelled_batches
from leanconv.data.spec import as_splits
from leanconv.plots import plot_candidates, plot_front, plot_layers
from leanconv.registry import convertible_kinds
from leanconv.train.distillation import DEFAULT_ALPHA, distill

SWEEP_RANKS = (1, 2, 4)
SWEEP_FRACTIONS = (0.15, 0.25, 0.4, 0.6)


@dataclass
class Trial:
    """One candidate whole-model conversion, tried and measured: the :func:`leanconv.convert`
    options asked for, what the converted model costs and how accurate it is after the
    least-squares refit (before any distillation). Not to be confused with
    :class:`leanconv.analysis.Candidate`, one way to build a single layer."""

    label: str
    options: Dict[str, Any]  # the convert() keyword arguments that define it
    macs: int
    params: int
    accuracy: float
    latency_ms: float  # batch 1, in its fastest deployment setting
    setting: str
    converted_layers: int
    model: Optional[nn.Module] = field(default=None, repr=False)
    plan: Optional[Plan] = field(default=None, repr=False)
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
    plan: Plan
    original: ModelStats
    candidates: List[Trial]  # every candidate conversion tried, in the order tried
    chosen: Trial
    distilled_accuracy: float
    efficiency: Dict[int, Any]  # batch size -> leanconv.bench.EfficiencyReport
    distill_history: Optional[Any] = None
    notes: List[str] = field(default_factory=list)
    layer_latency: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # path -> (dense ms, converted ms)
    out: Optional[Path] = None
    targets: Dict[int, Any] = field(default_factory=dict)  # batch size -> leanconv.deploy.measure.TargetsReport

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
        search = getattr(self.chosen.conversion, "search", None)
        if search is not None:
            rows.append((f"per-layer choice (batch {search.input_size[0]})", "dense", mix_text(search)))
        for batch, report in sorted(self.efficiency.items()):
            rows.append((f"latency, batch {batch}", report.latency_text("original"), report.latency_text("converted")))
            rows.append((f"speedup / realized efficiency, batch {batch}", "",
                         f"{report.speedup_text} / {report.efficiency_text}"))
        for batch, report in sorted(self.targets.items()):
            rows.append((f"fastest deployment, batch {batch}", _fastest(report, "original"),
                         _fastest(report, "converted")))
            rows.append((f"speedup vs the original at its best, batch {batch}", "",
                         format_ratio(report.speedup("original", "converted"))))
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
            "targets": {str(b): r.to_dict() for b, r in self.targets.items()},
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
        for batch, report in sorted(self.targets.items()):
            lines += [f"## Where each model is fastest, batch {batch}", "", report.summary("original", "converted"),
                      "", report.to_markdown()]
        lines += ["## Files", "", "- `model.pt`: the converted, distilled weights (state_dict); rebuild with "
                  "`leanconv.apply_plan(build_model(), 'plan.json')` then `load_state_dict`",
                  "- `plan.json`: which layers became which kind, with which ranks",
                  "- `summary.json`: every number above", "- `candidates.png`, `layers.png`: the plots below"
                  + (" (and `front.png`: the per-layer search's front)" if self.chosen.conversion is not None and
                     getattr(self.chosen.conversion, "search", None) is not None else ""), "",
                  "![candidates](candidates.png)", "", "![layers](layers.png)", ""]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers


def mix_text(search: Any) -> str:
    """A search's mix in one line: how many layers of each kind, where it was measured, and
    whether the request was met (``'dsconv x2, tucker2 x1, dense x1 on openvino int8: 2.31x, met'``)."""
    from collections import Counter

    kinds = Counter((layer.chosen or layer.dense).candidate.kind for layer in search.layers.values())
    mix = ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items()))
    state = "request met" if search.met else "REQUEST NOT MET"
    return f"{mix} on {search.target} {search.precision}: {search.speedup:.2f}x measured, {state} ({search.request})"


def evaluate(model: nn.Module, data: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode, restored afterwards, on its own device) on labelled
    data in any form of :mod:`leanconv.data.batches`: a dataset or DataLoader of ``(input, label)``."""
    device = model_device(model)
    correct = total = 0
    with evaluating(model), torch.inference_mode():
        for index, (x, y) in enumerate(labelled_batches(data, "data", batch_size=batch_size)):
            if y is None:
                raise ValueError(f"data: batch {index} has no labels; accuracy needs (input, label) items")
            correct += int((model(x.to(device)).argmax(1).cpu() == y.reshape(-1).cpu()).sum())
            total += y.numel()
    if total == 0:
        raise ValueError("the test data is empty")
    return correct / total


def calibration_batches(data: Any, images: int, batch_size: int = 64, seed: int = 0) -> List[torch.Tensor]:
    """``images`` training inputs in batches (no labels): from a map-style dataset, chosen by a
    seeded permutation; from a DataLoader or other iterable, the first ``images`` in its order."""
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:images].tolist()
        inputs = torch.stack([first_input(data[i], "data", i) for i in order])
        return list(check_batch(inputs, "data", 0).split(batch_size))
    taken: List[torch.Tensor] = []
    count = 0
    for batch in iter_batches(data, "data", batch_size=batch_size):
        taken.append(batch[: images - count])
        count += len(taken[-1])
        if count >= images:
            break
    if not taken:
        raise ValueError("data holds no input batches to calibrate on")
    return list(torch.cat(taken).split(batch_size))


def _as_device(device: Any, model: nn.Module) -> torch.device:
    """``device`` as a torch.device, default the model's; the meta device is refused."""
    chosen = torch_device(device) if device is not None else model_device(model)
    if chosen.type == "meta":
        raise ValueError("device is 'meta' (the model's weights hold no values): load real weights or pass device=")
    return chosen


def stem_paths(model: nn.Module, in_channels: int) -> List[str]:
    """The stem as a list (``[]`` or its path): :func:`leanconv.conversion.pipeline.stem_path`,
    the one definition that ``convert(keep_stem=True)`` uses too."""
    path = stem_path(model, in_channels)
    return [] if path is None else [path]


def _size_of(data: Any) -> str:
    """How much data: '359 items' for a sized dataset or DataLoader, else its type."""
    dataset = getattr(data, "dataset", data)
    return f"{len(dataset)} items" if hasattr(dataset, "__len__") else type(data).__name__


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _deployed(model: nn.Module, input_size: Sequence[int], min_run_time: float) -> Tuple[float, str]:
    best = benchmark_settings(model, input_size, min_run_time=min_run_time).best
    return best.latency_ms, best.setting


def _candidate_grid(rank: Optional[int], mac_fraction: Optional[float], target_speedup: Optional[float],
                    sweep: bool) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, convert kwargs) for every candidate to try; the one asked for comes first."""
    grid: List[Tuple[str, Dict[str, Any]]] = []
    if rank is not None:
        grid.append((f"rank {rank}", {"rank": rank}))
        grid += [(f"rank {r}", {"rank": r}) for r in (SWEEP_RANKS if sweep else ()) if r != rank]
    else:
        fractions = [mac_fraction] if mac_fraction is not None else []
        fractions += [f for f in (SWEEP_FRACTIONS if sweep or mac_fraction is None else ()) if f not in fractions]
        grid += [(f"{f:.0%} of the MACs", {"mac_fraction": f}) for f in fractions]
        if target_speedup is not None:
            grid.append((f"latency budget (1/{target_speedup:g} of the original)", {"speedup": target_speedup}))
    return grid


def _choose(candidates: List[Trial], original: ModelStats, target_speedup: Optional[float],
            notes: List[str]) -> Trial:
    """The first candidate (the one asked for) without a target speedup; with one, the most accurate
    candidate whose measured batch-1 speedup reaches it, else the fastest (with a note). A
    per-layer search is its own choice; a request it did not meet becomes the first note."""
    search = getattr(candidates[0].conversion, "search", None)
    if search is not None:
        if not search.met:
            notes.insert(0, search.headline())
        return candidates[0]
    if target_speedup is None:
        return candidates[0]  # the rank or MAC fraction asked for
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
    mac_fraction: Optional[float] = None,
    target_speedup: Optional[float] = None,
    epochs: int = 3,
    lr: float = 1e-3,
    alpha: float = DEFAULT_ALPHA,
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
    device: Optional[Union[str, torch.device]] = None,
    targets: Union[None, str, Sequence[str]] = None,
    precisions: Optional[Sequence[str]] = None,
    search_target: Optional[str] = None,
    search_precision: Optional[str] = None,
    search_batch: Optional[int] = None,
) -> OptimizeResult:
    """Convert ``model`` to kind ``to``, recover its accuracy, deploy and measure it (see the module doc).

    ``data``: train and validation data of ``(input, label)`` items, as a
    :class:`leanconv.data.DataSplits`, a ``--data`` string (``'digits'``, a CIFAR-10 or
    class-folder path: :func:`leanconv.data.load_data`), a ``(train, val)`` pair or a
    ``{'train': ..., 'val': ...}`` dict of DataLoaders or datasets (docs/data.md); the input
    size is that of the first training batch. ``device``: where everything runs (default: the
    model's device): conversion, refit, evaluation, distillation and the latency measurements
    (:mod:`leanconv.bench` times on the models' device). Choose with one of ``rank`` (fixed
    rank everywhere), ``mac_fraction`` (a fraction in (0, 1] of the original MACs, which
    becomes :func:`leanconv.convert`'s ``mac_budget``, a MAC count) or ``target_speedup``
    (measured, batch 1). ``epochs`` of distillation (0 skips it). ``batch_sizes``: where the
    realized efficiency is measured (``()`` measures none, for a caller that measures itself as
    the demo does; ``out`` and ``result.converted`` need one). ``keep_stem`` leaves the first
    conv on the image dense. ``lr``/``alpha``: distillation's Adam learning rate and weight of
    the teacher's soft targets (:data:`leanconv.train.DEFAULT_ALPHA`, as for ``distill``). ``out``:
    a folder to write (must not exist unless ``force``), written all at once. ``targets``
    (``'all'``, or names from :data:`leanconv.deploy.TARGETS`) and ``precisions``: measure both
    models on those deployment targets at each batch size too, with accuracy per precision, and
    report where each is fastest and the speedup against the original at its best
    (:func:`leanconv.deploy.measure.measure_targets`; None, the default: not measured).
    ``to='auto'`` + ``target_speedup``: per-layer kinds by latency on ``search_target`` (default:
    the original's fastest here) in ``search_precision`` (default: each) at ``search_batch``
    (default: the largest batch size; :mod:`leanconv.conversion.auto`); an unmet request: first note.
    """
    _check_choice(rank, mac_fraction, target_speedup, to)
    _check_run(epochs, batch_sizes, lr, alpha, calib_images, to)
    search = _Search(search_target, search_precision, search_batch or max(batch_sizes, default=1), precisions)
    device, data = _check_inputs(model, data, device, out, force, batch_sizes)
    say = _Say(progress)
    say(f"measuring the original on {data.name} data ({_size_of(data.test)}) on {device}")
    setup = _Setup(copy.deepcopy(model).to(device).eval(), data, data.input_size(1), min_run_time,
                   device)  # every step reads this copy
    original = _measure_original(setup)
    conversion = _Conversion.of(setup, to, exclude, keep_stem, calib_images, seed)
    notes = [f"kept dense by request or as the stem: {', '.join(conversion.skip)}"] if conversion.skip else []
    grid = _candidate_grid(rank, mac_fraction, target_speedup, sweep) if to != AUTO else search.grid(target_speedup)
    candidates = _try_candidates(grid, setup, original, conversion, notes, say)
    chosen = _choose(candidates, original, target_speedup, notes)
    student, history = _distill_chosen(chosen, setup, _Distillation(epochs, lr, alpha, seed, progress), say)
    distilled_accuracy = evaluate(student, data.test)
    efficiency = _measure_efficiency(student, setup, batch_sizes, say)
    say("timing each converted layer against its dense original")
    result = OptimizeResult(student, chosen.plan, original, candidates, chosen, distilled_accuracy, efficiency,
                            history, notes, layer_latency(setup.original, chosen, setup.input_size),
                            targets=_on_targets(student, setup, batch_sizes, targets, precisions, say))
    if out is not None:
        write_outputs(result, out, force, title)
        result.out = Path(out)
    return result


# ------------------------------------------------------------------------------------- the steps


def _check_inputs(model: Any, data: Any, device: Any, out: Any, force: bool, batch_sizes: Sequence[int]
                  ) -> Tuple[torch.device, Any]:
    """The device and the data splits, checked with the model and the output folder before any work."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    device = _as_device(device, model)
    data = as_splits(data)
    _check_channels(model, data)
    if out is not None:
        if not batch_sizes:
            raise ValueError("batch_sizes=() measures no batch size, but out= writes a report that needs one")
        check_new_folder(out, force)  # refuse before any work
    return device, data


@dataclass
class _Search:
    """Where ``to='auto'`` measures: a target (None: the fastest for the original), a precision
    (None: each the target runs), the batch, and the precisions allowed for finding the target."""

    target: Optional[str]
    precision: Optional[str]
    batch: int
    precisions: Optional[Sequence[str]] = None

    def grid(self, target_speedup: float) -> List[Tuple[str, Dict[str, Any]]]:
        where = self.target or "the original's fastest target"
        return [(f"per-layer mix for {target_speedup:g}x on {where}, batch {self.batch}",
                 {"to": AUTO, "target": self.target, "precision": self.precision, "target_speedup": target_speedup,
                  "batch": self.batch, "precisions": self.precisions})]

    @staticmethod
    def convert_options(options: Dict[str, Any], setup: "_Setup", say: Any) -> Dict[str, Any]:
        """:func:`leanconv.convert`'s ``to='auto'`` arguments for the grid entry ``options``."""
        batch = options["batch"]
        target = options["target"] or fastest_target(setup.original, setup.data, batch, setup.device,
                                                      options["precisions"], say)
        return {"to": AUTO, "target": target, "precision": options["precision"], "input_size": setup.data.input_size(batch),
                "target_speedup": options["target_speedup"], "accept_slower": True, "progress": say}


def fastest_target(model: nn.Module, data: Any, batch: int, device: torch.device,
                   precisions: Optional[Sequence[str]] = None, say: Any = None) -> str:
    """The deployment target ``model`` runs fastest on here at ``batch`` (every available one,
    outputs checked, int8 calibrated on training images; :func:`measure_on_targets`)."""
    if say is not None:
        say(f"finding the original's fastest deployment target at batch {batch}")
    from leanconv.deploy.measure import measure_targets

    calib = calibration_batches(data.train, max(64, 4 * batch), batch_size=batch)
    report = measure_targets({"original": model}, data.input_size(batch), precisions=precisions, calib=calib,
                             device=str(device), rounds=3, eager=False)
    remember_dense(model, report, str(device))  # the search's baseline reads these, not measuring twice
    return report.best("original").target


@dataclass
class _Setup:
    """What every measurement of one :func:`optimize` run reads: the original (an eval-mode copy
    on the device, never trained), the data, the batch-1 input size, the time per latency
    measurement and the device."""

    original: nn.Module
    data: Any
    input_size: Tuple[int, ...]
    min_run_time: float
    device: torch.device = torch.device("cpu")


@dataclass
class _Conversion:
    """How each candidate is converted: the kind, the refit's calibration batches, the layers kept dense."""

    to: str
    calib: List[torch.Tensor]
    calib_images: int
    skip: List[str]  # exclude patterns and, with keep_stem, the stem (for the notes)
    exclude: List[str]
    keep_stem: bool

    @classmethod
    def of(cls, setup: _Setup, to: str, exclude: Optional[Sequence[str]], keep_stem: bool, calib_images: int,
           seed: int) -> "_Conversion":
        """``calib_images`` seeded training images; ``exclude`` and, with ``keep_stem``, the stem kept dense."""
        skip = list(exclude or []) + (stem_paths(setup.original, setup.input_size[1]) if keep_stem else [])
        calib = [batch.to(setup.device) for batch in calibration_batches(setup.data.train, calib_images, seed=seed)]
        return cls(to, calib, calib_images, skip, list(exclude or []), keep_stem)


@dataclass
class _Distillation:
    """:func:`leanconv.train.distill`'s settings for the chosen candidate (``epochs=0``: none)."""

    epochs: int
    lr: float
    alpha: float
    seed: int
    progress: bool


def _check_choice(rank: Optional[int], mac_fraction: Optional[float], target_speedup: Optional[float],
                  to: str = "dsconv") -> None:
    """Exactly one way to choose the conversion, each with a valid value (``to='auto'``: a speedup)."""
    if sum(v is not None for v in (rank, mac_fraction, target_speedup)) != 1:
        raise ValueError("pass exactly one of rank, mac_fraction and target_speedup")
    if to == AUTO and target_speedup is None:
        raise ValueError("to='auto' chooses each layer's kind and rank for a target_speedup: pass target_speedup "
                         "(not rank or mac_fraction)")
    if rank is not None:
        check_positive_int(rank, "rank")
    if mac_fraction is not None and not (_is_number(mac_fraction) and 0 < mac_fraction <= 1):
        raise ValueError(f"mac_fraction={mac_fraction!r} must be a fraction of the original MACs in (0, 1]")
    if target_speedup is not None and not (_is_number(target_speedup) and target_speedup > 0
                                           and math.isfinite(target_speedup)):
        raise ValueError(f"target_speedup={target_speedup!r} must be a number > 0")


def _check_run(epochs: int, batch_sizes: Sequence[int], lr: float = 1e-3, alpha: float = DEFAULT_ALPHA,
               calib_images: int = 1, to: str = "dsconv") -> None:
    """The run's settings, each with its rule, before any work (the data is read after)."""
    if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 0):
        raise ValueError(f"epochs={epochs!r} must be an int >= 0")
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence):
        raise ValueError(f"batch_sizes={batch_sizes!r} must be a sequence of ints >= 1, e.g. (1, 16)")
    for batch in batch_sizes:
        check_positive_int(batch, "batch_sizes")
    if not (_is_number(lr) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr!r} must be a finite number > 0 (distillation's Adam learning rate)")
    if not (_is_number(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha={alpha!r} must be in [0, 1] (the weight of the teacher's soft targets)")
    check_positive_int(calib_images, "calib_images")
    if to not in (*convertible_kinds(), AUTO):
        raise ValueError(f"to={to!r} must be one of {[*convertible_kinds(), AUTO]}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _measure_original(setup: _Setup) -> ModelStats:
    """The original's test accuracy, params, MACs and latency in its fastest deployment setting."""
    latency, setting = _deployed(setup.original, setup.input_size, setup.min_run_time)
    return ModelStats(evaluate(setup.original, setup.data.test), _params(setup.original),
                      count_macs(setup.original, setup.input_size), latency, setting)


def _convert_options(options: Dict[str, Any], original: ModelStats, setup: _Setup, say: Any = None) -> Dict[str, Any]:
    """:func:`leanconv.convert`'s keyword arguments for one candidate: a MAC fraction becomes a MAC
    count, a target speedup a latency budget in eager milliseconds, a per-layer search its
    target (the fastest for the original, when not named), input size and progress lines."""
    if options.get("to") == AUTO:
        return _Search.convert_options(options, setup, say)
    if "mac_fraction" in options:
        return {"mac_budget": int(original.macs * options["mac_fraction"])}
    if "speedup" in options:
        return {"latency_budget": _eager_ms(setup.original, setup.input_size, setup.min_run_time) / options["speedup"]}
    return dict(options)


def _try_candidates(grid: List[Tuple[str, Dict[str, Any]]], setup: _Setup, original: ModelStats,
                    conversion: _Conversion, notes: List[str], say: _Say) -> List[Trial]:
    """Convert and refit the original once per candidate in ``grid`` and measure each result; a
    candidate :func:`leanconv.convert` refuses is skipped with a note."""
    trials: List[Trial] = []
    for label, options in grid:
        say(f"candidate {label}: convert, refit on {conversion.calib_images} images, measure")
        arguments = dict(to=conversion.to, input_size=setup.input_size, calib=conversion.calib,
                         exclude=conversion.exclude, keep_stem=conversion.keep_stem)
        try:
            result = convert(setup.original, **{**arguments, **_convert_options(options, original, setup, say)})
        except ValueError as error:  # e.g. a budget below what the lowest ranks reach
            notes.append(f"candidate {label} skipped: {error}")
            continue
        trials.append(_measure_trial(label, options, result, setup))
    if not trials:
        raise ValueError("no candidate conversion was possible: " + "; ".join(notes))
    return trials


def _measure_trial(label: str, options: Dict[str, Any], result: Any, setup: _Setup) -> Trial:
    """A :class:`Trial` from one :class:`leanconv.conversion.ConversionResult`: cost, accuracy, latency."""
    converted = result.model.eval()
    latency, setting = _deployed(converted, setup.input_size, setup.min_run_time)
    return Trial(label, options, count_macs(converted, setup.input_size), _params(converted),
                 evaluate(converted, setup.data.test), latency, setting, sum(r.converted for r in result.layers),
                 converted, result.plan, result)


def _distill_chosen(chosen: Trial, setup: _Setup, settings: _Distillation, say: _Say) -> Tuple[nn.Module, Any]:
    """A copy of the chosen candidate's model, distilled from the original; and the loss history
    (None without epochs)."""
    student = copy.deepcopy(chosen.model)
    if not settings.epochs:
        return student, None
    say(f"distilling the original into '{chosen.label}' for {settings.epochs} epoch(s)")
    history = distill(student, setup.original, setup.data.train, epochs=settings.epochs, lr=settings.lr,
                      alpha=settings.alpha, seed=settings.seed, progress=settings.progress, device=setup.device)
    return student, history


def _measure_efficiency(student: nn.Module, setup: _Setup, batch_sizes: Sequence[int], say: _Say) -> Dict[int, Any]:
    """Batch size -> :class:`leanconv.bench.EfficiencyReport` of ``student`` against the original."""
    efficiency = {}
    for batch in batch_sizes:
        say(f"measuring realized efficiency at batch {batch}")
        efficiency[batch] = realized_efficiency(setup.original, student.eval(), setup.data.input_size(batch),
                                                min_run_time=setup.min_run_time)
    return efficiency


def _check_channels(model: nn.Module, data: Any) -> None:
    """The images' channels are what the model's first conv reads (checked before the long run)."""
    first = next(((path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    channels = data.input_size(1)[1]
    if first is not None and first[1].in_channels != channels:
        raise ValueError(f"data: images have {channels} channels, but the model's first conv {first[0]!r} takes "
                         f"{first[1].in_channels}")


def _on_targets(student: nn.Module, setup: _Setup, batch_sizes: Sequence[int], targets: Union[None, str, Sequence[str]],
                precisions: Optional[Sequence[str]], say: _Say) -> Dict[int, Any]:
    """Batch size -> both models measured on the deployment ``targets`` (none when None)."""
    reports = {}
    for batch in batch_sizes if targets is not None else ():
        say(f"measuring both models on every deployment target at batch {batch}")
        reports[batch] = measure_on_targets(setup.original, student.eval(), setup.data, batch, targets, 3,
                                            setup.min_run_time, setup.device, precisions)
    return reports


def measure_on_targets(original: nn.Module, converted: nn.Module, data: Any, batch: int,
                       targets: Union[str, Sequence[str]], rounds: int, min_run_time: float,
                       device: Union[str, torch.device], precisions: Optional[Sequence[str]] = None) -> Any:
    """Both models on the deployment ``targets`` (``'all'``: every one available) at ``batch``:
    int8 calibrated on at least 64 training images, accuracy on ``data.test``
    (:func:`leanconv.deploy.measure.measure_targets`; optimize and the demo share it)."""
    from leanconv.deploy.measure import measure_targets

    calib = calibration_batches(data.train, max(64, 4 * batch), batch_size=batch)
    return measure_targets({"original": original, "converted": converted}, data.input_size(batch),
                           targets=None if targets == "all" else targets, precisions=precisions, calib=calib,
                           val=data.test, device=str(device), rounds=rounds, min_run_time=min_run_time)


def _fastest(report: Any, model: str) -> str:
    best = report.best(model)
    accuracy = "" if best.accuracy is None else f", {best.accuracy:.2%}"
    return f"{best.latency.median:.3f} ms ({best.target} {best.ran or best.precision}{accuracy})"


def layer_latency(original: nn.Module, chosen: Trial, input_size: Sequence[int]) -> Dict[str, Tuple[float, float]]:
    """Per converted layer: (dense ms, converted ms) timed alone at its input shape (cached)."""
    sizes = input_sizes(original, input_size)
    cache = LatencyCache()
    timings = {}
    for path, layer in chosen.plan.layers.items():
        conv = original.get_submodule(path)
        shape = (input_size[0], conv.in_channels, *sizes[path])
        dense = cache.latency(describe(conv, "dense", {}), build_module(conv, "dense", {}), shape)
        converted = cache.latency(describe(conv, layer.kind, layer.options),
                                  build_module(conv, layer.kind, layer.options), shape)
        timings[path] = (dense, converted)
    cache.save()
    return timings


def _eager_ms(model: nn.Module, input_size: Sequence[int], min_run_time: float) -> float:
    """Batch-``input_size`` eager latency: what per-layer timings in a latency budget add up to."""
    return measure_latency(model, torch.randn(tuple(input_size), device=model_device(model)), min_run_time=min_run_time,
                           num_threads=torch.get_num_threads())


def write_outputs(result: OptimizeResult, out: Union[str, Path], force: bool, title: str) -> None:
    """model.pt, plan.json, summary.json, report.md and the plots, all at once."""
    with staged_folder(out, force) as staging:
        torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                   staging / "model.pt")  # CPU tensors: loads on any machine
        save_plan(result.plan, staging / "plan.json")
        (staging / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        plot_candidates(result, staging / "candidates.png")
        plot_layers(result, staging / "layers.png")
        if getattr(result.chosen.conversion, "search", None) is not None:
            plot_front(result.chosen.conversion.search, staging / "front.png")
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


__all__ = ["ModelStats", "OptimizeResult", "Trial", "calibration_batches", "evaluate", "fastest_target", "layer_latency",
           "measure_on_targets", "optimize",
           "stem_paths", "write_outputs"]
