"""The per-layer search of ``convert(to='auto')`` on ResNet-18: fidelity against single kinds, and search time.

Issue #14, goals 2 and 3, measured in one process on this machine (random weights, seeded;
latency does not depend on weights, output error is measured on seeded random images):

1. **Fastest target.** The dense ResNet-18 (batch 1, 224x224) on every available target and
   precision (``leanconv.deploy.measure.measure_targets``, outputs checked against fp32
   eager, int8 calibrated on seeded random images cut to batch 1); the fastest one is the
   target every search below runs on.
2. **Goal 2 (fidelity).** ``convert(to='auto', target_speedup=2.0)`` on that target (the mix),
   then for each kind of ``searched_kinds()`` the single-kind search ``kinds=[kind]`` at the mix's
   latency budget (``latency_budget=mix.search.budget_ms``, ``accept_slower=True``). Each is
   scored by the relative error of the whole model's logits against the original,
   ``||y - y_ref|| / ||y_ref||``, in fp32 eager on held-out images (not the calibration ones),
   and as deployed (the held-out images through the int8/bf16/fp32 deployment), then all of them
   (dense too) are measured interleaved on the target. Goal: the mix has a lower output error
   than the best single-kind conversion that reaches the same measured latency: not slower than
   the mix in every interleaved round (the per-round ratio within noise or better); the looser
   reading (its range of rounds overlaps the mix's) is judged and written beside it.
3. **Goal 3 (search time).** The whole ``convert(to='auto')`` call timed (wall and process CPU
   seconds, load average before and after, per phase from the ``progress`` lines) with an empty
   latency cache (``LEANCONV_CACHE_DIR`` pointed at a fresh temporary folder), then with it warm
   (goal on 2 cores: < 3 min cold, < 30 s warm), then warm again with one torch thread.

Writes ``auto_search.json`` and ``auto_search.md`` under ``--out`` atomically; refuses to replace
them without ``--force`` (before measuring anything). ``--render`` measures nothing: it judges the
numbers stored in ``auto_search.json`` again and rewrites both files (noted in them).

    python benchmarks/auto_search.py [--force] [--out benchmarks/results] [--quick] [--render]

``--quick``: the digits CNN (random weights) at 32x32, kinds dsconv and tucker2, onnxruntime
fp32 and int8, 3 rounds (a dry run in about two minutes; its numbers say nothing about the goals).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

import leanconv
from leanconv._files import write_atomic
from leanconv.conversion.candidates import searched_kinds
from leanconv.deploy.measure import EAGER, TargetRow, TargetsReport, measure_targets
from leanconv.timing import Spread, format_ms, format_ratio, ratio_spread

COLD_GOAL_S = 180.0  # the whole search with an empty latency cache, on 2 cores (issue 14, goal 3)
WARM_GOAL_S = 30.0  # the same with the latency cache warm
WARM_RUNS = ((None, "mix (warm cache)"), (1, "mix (warm cache, 1 torch thread)"))
"""Warm-cache searches: torch's own thread count (the goal), then torch.set_num_threads(1): on a
shared 2-core machine two torch threads can wait on each other (the fits are many small ops)."""
TARGET_SPEEDUP = 2.0
SEARCH_IMAGES = 48
"""Calibration images given to every search: the candidates are fitted on the first 32
(``leanconv.conversion.auto.SEARCH_IMAGES``), the mixes that compete at the end are scored
whole on the other 16, and the final refit uses all 48."""
HELD_OUT_IMAGES = 16  # other images: the output error of each conversion
INT8_CALIB_IMAGES = 4  # of the calibration images, cut to batch 1, for the measured deployments


# -- pure helpers (tested in tests/test_auto_search_benchmark.py) ---------------------------------

def spread_dict(spread: Optional[Spread]) -> Optional[Dict[str, float]]:
    return None if spread is None else {"median": spread.median, "low": spread.low, "high": spread.high,
                                        "rounds": spread.rounds}


def reaches(latency: Optional[Dict[str, float]], mix: Optional[Dict[str, float]]) -> Optional[bool]:
    """Whether a conversion reaches the mix's measured latency within the measured ranges: its
    fastest round is no slower than the mix's slowest (None when either was not measured)."""
    if latency is None or mix is None:
        return None
    return latency["low"] <= mix["high"]


def reaches_paired(mix_samples: Sequence[float], samples: Sequence[float]) -> bool:
    """Whether a conversion reaches the mix's measured latency by the interleaved rounds: the
    per-round ratio mix ms / its ms is not below 1 in every round (it is as fast, faster, or
    within noise of the mix); one slower in every round does not."""
    return ratio_spread(mix_samples, samples).high >= 1.0


def fidelity_verdict(mix: Dict[str, Any], singles: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Goal 2 from the numbers. ``mix`` and each of ``singles``: ``{'label', 'error', 'latency'}``
    (latency: a :func:`spread_dict` or None; optional ``choice``: path -> chosen candidate;
    optional ``reaches``: whether it reaches the mix's latency, else :func:`reaches` on the
    ranges). Among the single-kind conversions that reach the mix's measured latency, the one of
    least error is the one to beat.

    ``verdict``: ``'holds'`` (the mix's error is lower), ``'does not hold'`` (a single kind that
    reaches the mix's latency has a lower error), ``'tie'`` (the best such single kind has the
    same error: the mix chose the same conversion, or as good a one), ``'no single kind reaches the
    mix's latency'`` (every single-kind conversion measured slower: nothing to compare at equal
    latency) or ``'not measured'`` (the mix's latency is missing)."""
    if mix.get("latency") is None:
        return {"verdict": "not measured", "holds": None, "rival": None,
                "text": "the mix was not measured on the target, so the goal cannot be judged"}
    rivals = [s for s in singles
              if (s["reaches"] if s.get("reaches") is not None else reaches(s.get("latency"), mix["latency"]))]
    if not rivals:
        slower = ", ".join(s["label"] for s in singles)
        return {"verdict": "no single kind reaches the mix's latency", "holds": None, "rival": None,
                "text": f"no single-kind conversion ({slower}) reaches the mix's measured latency at the same "
                        "budget, so there is no equal-latency comparison: the mix is faster than each of them"}
    best = min(rivals, key=lambda s: s["error"])
    among = f"(of {len(rivals)} that do: {', '.join(s['label'] for s in rivals)})"
    same = mix.get("choice") is not None and mix.get("choice") == best.get("choice")
    if same or math.isclose(mix["error"], best["error"], rel_tol=1e-9, abs_tol=1e-12):
        why = "the mix chose the very same conversion" if same else "the errors are equal"
        return {"verdict": "tie", "holds": None, "rival": best["label"],
                "text": f"the mix's output error {mix['error']:.4f} equals that of {best['label']} "
                        f"({best['error']:.4f}), the best single-kind conversion that reaches the mix's measured "
                        f"latency {among}: {why}"}
    holds = mix["error"] < best["error"]
    relation = "lower" if holds else "higher"
    digits = 4 if f"{mix['error']:.4f}" != f"{best['error']:.4f}" else 6
    close = abs(mix["error"] - best["error"]) / best["error"] if best["error"] else math.inf
    by = f" by {close:.2%}" if close < 0.01 else ""
    return {"verdict": "holds" if holds else "does not hold", "holds": holds, "rival": best["label"],
            "text": f"the mix's output error {mix['error']:.{digits}f} is {relation}{by} than that of {best['label']} "
                    f"({best['error']:.{digits}f}), the best single-kind conversion that reaches the mix's measured "
                    f"latency {among}"}


def time_verdict(cold_s: float, warm_s: float, cold_goal_s: float = COLD_GOAL_S,
                 warm_goal_s: float = WARM_GOAL_S) -> Dict[str, Any]:
    """Goal 3 from the wall times of the cold-cache and warm-cache searches."""
    cold, warm = cold_s < cold_goal_s, warm_s < warm_goal_s
    return {"cold_met": cold, "warm_met": warm, "holds": cold and warm,
            "text": f"empty cache {cold_s:.1f} s ({'<' if cold else '>='} {cold_goal_s:.0f} s goal), warm cache "
                    f"{warm_s:.1f} s ({'<' if warm else '>='} {warm_goal_s:.0f} s goal)"}


def phase_of(line: str) -> str:
    """The search phase a ``progress`` line starts."""
    if line.startswith("measuring the dense model"):
        return "dense baseline"
    if line.startswith("layer "):
        return "fit candidates"
    if line.startswith("timing layer"):
        return "time candidates"
    if line.startswith("measuring the whole converted model"):
        return "whole-model measurements"
    return "other"


LAST_PHASE = "last measurement + final refit"


def phases(lines: Sequence[Tuple[float, str]], total_s: float) -> Dict[str, float]:
    """Seconds per phase from timestamped ``progress`` lines (seconds since the call began):
    each line's phase lasts until the next line; the time before the first line is
    ``'setup'``; the last line runs to ``total_s`` (the call's end) and is counted apart, since
    it holds the last whole-model measurement and everything after the search (refit, report)."""
    out: Dict[str, float] = {}
    if not lines:
        return {"setup": total_s}
    out["setup"] = lines[0][0]
    for (start, line), (end, _) in zip(lines, lines[1:]):
        out[phase_of(line)] = out.get(phase_of(line), 0.0) + end - start
    out[LAST_PHASE] = total_s - lines[-1][0]
    return out


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``||y - y_ref|| / ||y_ref||`` over every image's logits together, in float64."""
    output, reference = output.double(), reference.double()
    return float(torch.linalg.vector_norm(output - reference) / torch.linalg.vector_norm(reference))


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- the runs --------------------------------------------------------------------------------------

class Setup:
    """The model, its input size, the images and the search settings (full run or ``--quick``)."""

    def __init__(self, quick: bool) -> None:
        torch.manual_seed(0)
        if quick:
            from leanconv.models.digits import digits_cnn

            self.name, self.model, self.input_size = "digits_cnn", digits_cnn().eval(), (1, 1, 32, 32)
            self.kinds: Optional[List[str]] = ["dsconv", "tucker2"]
            self.targets: Optional[List[str]] = ["onnxruntime"]
            self.precisions: Optional[List[str]] = None  # fp32 and int8 (the search tries both)
            self.rounds, self.min_run_time = 3, 0.05
        else:
            from leanconv.models.resnet import resnet18

            self.name, self.model, self.input_size = "resnet18", resnet18().eval(), (1, 3, 224, 224)
            self.kinds, self.targets, self.precisions = None, None, None
            self.rounds, self.min_run_time = 7, 0.3
        chw = self.input_size[1:]
        self.calib = list(torch.randn(SEARCH_IMAGES, *chw, generator=torch.Generator().manual_seed(1)).split(16))
        self.held_out = torch.randn(HELD_OUT_IMAGES, *chw, generator=torch.Generator().manual_seed(2))
        self.deploy_calib = list(torch.cat(self.calib)[:INT8_CALIB_IMAGES].split(1))  # batch 1, like the search's
        self.searched = self.kinds if self.kinds is not None else searched_kinds()


def fastest_target(setup: Setup) -> Tuple[TargetsReport, Dict[str, Any]]:
    """The dense model on every target and precision; the fastest row."""
    print(f"dense {setup.name} on every target and precision ...", file=sys.stderr, flush=True)
    report = measure_targets({"dense": setup.model}, setup.input_size, targets=setup.targets,
                             precisions=setup.precisions, calib=setup.deploy_calib, threads=1, rounds=setup.rounds,
                             min_run_time=setup.min_run_time)
    best = report.best("dense")
    return report, {"target": best.target, "precision": best.precision, "ran": best.ran,
                    "latency_ms": spread_dict(best.latency)}


def timed_convert(setup: Setup, label: str, **kwargs: Any) -> Tuple[Any, Dict[str, Any]]:
    """One ``convert(to='auto')`` call: the result and its timing row (wall, CPU, load, phases)."""
    lines: List[Tuple[float, str]] = []
    start = 0.0  # set just before the call

    def progress(line: str) -> None:
        lines.append((time.perf_counter() - start, line))
        print(f"  {label} {lines[-1][0]:7.1f}s {line}", file=sys.stderr, flush=True)

    load_before, cpu, threads = load_average(), time.process_time(), torch.get_num_threads()
    start = time.perf_counter()
    result = leanconv.convert(setup.model, to="auto", input_size=setup.input_size, calib=setup.calib,
                              accept_slower=True, progress=progress, **kwargs)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    search = result.search
    row = {"label": label, "seconds": seconds, "cpu_seconds": cpu_seconds, "torch_threads": threads,
           "load_before": load_before,
           "load_after": load_average(), "phases": phases(lines, seconds), "progress": lines,
           "request": search.request, "budget_ms": search.budget_ms, "precision": search.precision,
           "baseline_ms": search.baseline_ms, "baseline_precision": search.baseline_precision, "met": search.met,
           "search_speedup": search.speedup, "headline": search.headline(),
           "attempts": [{"budget_ms": a.budget_ms, "predicted_ms": a.predicted_ms, "measured_ms": a.measured_ms,
                         "fixed_ms": a.fixed_ms, "damage": a.damage} for a in search.attempts],
           "final_attempt": search.attempts.index(search.final) + 1,
           "other_precisions": dict(getattr(search, "alternatives", {}) or {}),
           "choice": {path: (layer.chosen.candidate.label if layer.chosen else "dense")
                      for path, layer in search.layers.items()},
           "reasons": {path: layer.reason for path, layer in search.layers.items()},
           "kinds_used": sorted({layer.chosen.candidate.kind for layer in search.layers.values()
                                 if layer.chosen and not layer.chosen.candidate.dense}),
           "mac_ratio_convertible": result.macs_after / max(result.macs_before, 1),
           "converted_layers": sum(r.converted for r in result.layers), "layers": len(result.layers)}
    print(f"  {label}: {seconds:.1f} s, {search.headline()}", file=sys.stderr, flush=True)
    return result, row


def cache_entries(folder: Path) -> int:
    path = folder / "latency.json"
    return len(json.loads(path.read_text())) if path.exists() else 0


@contextlib.contextmanager
def fresh_cache(prefix: str) -> Iterator[Path]:
    """A new, empty ``LEANCONV_CACHE_DIR`` for the searches inside (timings and fits), removed after."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    previous = os.environ.get("LEANCONV_CACHE_DIR")
    os.environ["LEANCONV_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("LEANCONV_CACHE_DIR", None)
        else:
            os.environ["LEANCONV_CACHE_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def search_runs(setup: Setup, target: str) -> Dict[str, Any]:
    """Goal 3's timed searches (empty, then warm latency cache) and goal 2's single-kind
    searches at the mix's budget; every search reads and writes one fresh cache folder."""
    warm_result = None
    with fresh_cache("leanconv-auto-search-") as folder:
        common = {"target": target, "kinds": setup.kinds}
        print(f"search, empty latency cache ({folder}) ...", file=sys.stderr, flush=True)
        mix, cold = timed_convert(setup, "mix (empty cache)", target_speedup=TARGET_SPEEDUP, **common)
        cold["cache_entries_after"] = cache_entries(folder)
        warm_rows = []
        for threads, label in WARM_RUNS:
            print(f"search again, warm latency cache ({label}) ...", file=sys.stderr, flush=True)
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                result, row = timed_convert(setup, label, target_speedup=TARGET_SPEEDUP, **common)
            finally:
                torch.set_num_threads(before)
            row["cache_entries_after"] = cache_entries(folder)
            row["same_choice_as_cold"] = (row["choice"], row["precision"]) == (cold["choice"], cold["precision"])
            warm_rows.append(row)
            warm_result = result if warm_result is None else warm_result
        budget, precision = mix.search.budget_ms, mix.search.precision
        singles = {}
        for kind in setup.searched:
            print(f"single-kind search {kind} at {budget:.3f} ms ...", file=sys.stderr, flush=True)
            singles[kind] = timed_convert(setup, kind, target=target, precision=precision, kinds=[kind],
                                          latency_budget=budget)
    return {"mix": mix, "cold": cold, "warm_result": warm_result, "warm": warm_rows[0], "warm_rows": warm_rows,
            "singles": singles, "one_precision": one_precision_runs(setup, target, precision),
            "budget_ms": budget, "precision": precision}


def one_precision_runs(setup: Setup, target: str, precision: str) -> Dict[str, Any]:
    """Goal 3 on one target and precision (the one the mix chose): the same request with
    ``precision`` given, in a fresh cache folder (empty), then again (warm)."""
    rows = {}
    with fresh_cache("leanconv-auto-search-one-") as folder:
        for state in ("empty", "warm"):
            label = f"mix, {precision} only ({state} cache)"
            print(f"search on {target} {precision} only, {state} cache ...", file=sys.stderr, flush=True)
            _, rows[state] = timed_convert(setup, label, target=target, precision=precision,
                                           target_speedup=TARGET_SPEEDUP, kinds=setup.kinds)
            rows[state]["cache_entries_after"] = cache_entries(folder)
    return {"precision": precision, "cold": rows["empty"], "warm": rows["warm"]}


def fidelity(setup: Setup, models: Dict[str, torch.nn.Module]) -> Dict[str, float]:
    """Each model's relative logit error against the original on the held-out images (fp32 eager)."""
    with torch.inference_mode():
        reference = setup.model(setup.held_out)
        return {label: relative_error(model.eval()(setup.held_out), reference) for label, model in models.items()}


def deployed_errors(setup: Setup, models: Dict[str, torch.nn.Module], target: str,
                    precision: str) -> Dict[str, Any]:
    """Each model deployed on ``target`` in ``precision`` (the same build and calibration as the
    timed one), run on the held-out images one at a time: the relative logit error against the
    original model in fp32 eager, so what the deployment adds (int8 ranges) counts too."""
    from leanconv.deploy.target import deploy, first_output

    print(f"output error as deployed on {target} {precision} ...", file=sys.stderr, flush=True)
    with torch.inference_mode():
        reference = setup.model(setup.held_out)
    errors: Dict[str, Any] = {}
    for label, model in models.items():
        try:
            deployed = deploy(model, target, precision, example=setup.deploy_calib[0], calib=setup.deploy_calib,
                              threads=1)
            output = torch.cat([first_output(deployed(x[None])) for x in setup.held_out])
            errors[label] = relative_error(output, reference)
        except Exception as error:  # a deployment that fails is a row, not a crash
            errors[label] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    return errors


def interleaved(setup: Setup, models: Dict[str, torch.nn.Module], target: str,
                precisions: Sequence[str]) -> TargetsReport:
    """Every model deployed on ``target`` in each of ``precisions``, timed in interleaved rounds."""
    print(f"every conversion on {target} {', '.join(precisions)}, interleaved ...", file=sys.stderr, flush=True)
    return measure_targets(models, setup.input_size, targets=[target], precisions=list(precisions),
                           calib=setup.deploy_calib, threads=1, rounds=setup.rounds, min_run_time=setup.min_run_time)


def _row(report: TargetsReport, label: str, precision: str) -> Optional[TargetRow]:
    return next((r for r in report.rows if r.model == label and r.precision == precision and r.target != EAGER), None)


def conversion_rows(report: TargetsReport, precision: str, errors: Dict[str, float],
                    searches: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per model: its latency on the target in the searched ``precision``, the honest speedup (the
    dense model at its best over every measured precision, per round), the output error, and
    (conversions) whether it reaches the mix's latency and the per-round ratio to the mix."""
    dense_best = report.best("dense")
    out = []
    for label, error in errors.items():
        measured = _row(report, label, precision)
        row: Dict[str, Any] = {"label": label, "error": error, "latency": None, "speedup": None,
                               "mac_ratio": report.macs[label] / report.macs["dense"]}
        if measured is not None and measured.status == "ok":
            row["latency"], row["samples"] = spread_dict(measured.latency), measured.samples
            row["difference_deployed"] = measured.difference
            speedup = ratio_spread(dense_best.samples, measured.samples)
            row["speedup"], row["speedup_text"] = spread_dict(speedup), format_ratio(speedup)
            if measured is dense_best:
                row["speedup_text"] = "1 (the dense model at its best)"
        else:
            row["not_measured"] = measured.reason if measured is not None else "no row"
        if label in searches:
            search = searches[label]
            row.update(kinds=search["kinds_used"], met=search["met"], choice=search["choice"],
                       search_measured_ms=search["attempts"][search["final_attempt"] - 1]["measured_ms"],
                       converted_layers=search["converted_layers"], layers=search["layers"])
        out.append(row)
    return out


def judge(results: Dict[str, Any]) -> Dict[str, Any]:
    """The verdicts, from the stored numbers (``results`` of :func:`run`, changed in place): per
    conversion whether it reaches the mix's latency (by the interleaved rounds, and by the looser
    overlap of ranges) and its per-round ratio to the mix; goal 2 on the fp32 output error (paired
    rounds, then ranges) and on the error as deployed; goal 3."""
    rows = results["conversions"]
    mix = next(r for r in rows if r["label"] == "mix")
    for row in rows:
        if row["label"] in ("dense", "mix"):
            continue
        row["reaches_mix_ranges"] = reaches(row["latency"], mix["latency"])
        row["reaches_mix"], row["vs_mix"] = row["reaches_mix_ranges"], None
        if row.get("samples") and mix.get("samples"):
            ratio = ratio_spread(mix["samples"], row["samples"])
            row["vs_mix"], row["vs_mix_spread"] = format_ratio(ratio), spread_dict(ratio)
            row["reaches_mix"] = reaches_paired(mix["samples"], row["samples"])
    labels = [r["label"] for r in results["single_searches"]]
    singles = [r for r in rows if r["label"] in labels]
    results["fidelity"] = fidelity_verdict(mix, [{**r, "reaches": r["reaches_mix"]} for r in singles])
    results["fidelity_ranges"] = fidelity_verdict(mix, [{**r, "reaches": r["reaches_mix_ranges"]} for r in singles])
    deployed = [{**r, "error": r.get("deployed_error"), "reaches": r.get("reaches_mix")} for r in [mix, *singles]]
    results["fidelity_deployed"] = (fidelity_verdict(deployed[0], deployed[1:])
                                    if all(isinstance(r["error"], float) for r in deployed) else
                                    {"verdict": "not measured", "holds": None, "rival": None,
                                     "text": "a deployment failed or was not measured: see the table"})
    st = results["search_time"]
    st["verdict"] = time_verdict(st["cold"]["seconds"], st["warm"]["seconds"])
    one = st.get("one_precision")
    if one:
        one["verdict"] = time_verdict(one["cold"]["seconds"], one["warm"]["seconds"])
    return results


def run(setup: Setup) -> Dict[str, Any]:
    targets_report, best = fastest_target(setup)
    print(f"fastest: {best}", file=sys.stderr, flush=True)
    runs = search_runs(setup, best["target"])
    models = {"dense": setup.model, "mix": runs["mix"].model}
    if not runs["warm"]["same_choice_as_cold"]:
        models["mix (warm rerun)"] = runs["warm_result"].model
    models.update({kind: result.model for kind, (result, _) in runs["singles"].items()})
    errors = fidelity(setup, models)
    precisions = list(dict.fromkeys([runs["precision"], best["precision"]]))  # the searched one, the dense's best
    report = interleaved(setup, models, best["target"], precisions)
    searches = {"mix": runs["cold"], "mix (warm rerun)": runs["warm"],
                **{kind: row for kind, (_, row) in runs["singles"].items()}}
    rows = conversion_rows(report, runs["precision"], errors, searches)
    deployed = deployed_errors(setup, models, best["target"], runs["precision"])
    for row in rows:
        row["deployed_error"] = deployed[row["label"]]
    return {"fastest": best, "targets": targets_report.to_dict(), "targets_markdown": targets_report.to_markdown(),
            "budget_ms": runs["budget_ms"], "precision": runs["precision"], "measured_precisions": precisions,
            "conversions": rows, "measured": report.to_dict(), "measured_markdown": report.to_markdown(),
            "search_time": {"cold": runs["cold"], "warm": runs["warm"], "warm_rows": runs["warm_rows"],
                            "one_precision": runs["one_precision"]},
            "single_searches": [row for _, row in runs["singles"].values()]}


# -- the report ------------------------------------------------------------------------------------

def _ms(latency: Optional[Dict[str, float]]) -> str:
    return "-" if latency is None else format_ms(Spread(latency["median"], latency["low"], latency["high"],
                                                        int(latency["rounds"])))


def _error(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _reach(row: Dict[str, Any]) -> str:
    if "reaches_mix" not in row:
        return "-"
    return f"{_yes(row['reaches_mix'])} / {_yes(row.get('reaches_mix_ranges'))}"


def _yes(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "no")


def conversions_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ["| conversion | kinds used | converted layers | MAC ratio (model) | latency ms | speedup vs dense at its "
             "best | vs the mix (mix ms / this ms) | output error (fp32) | output error as deployed | reaches the mix's "
             "latency (rounds / ranges) | search met budget |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        latency = _ms(r["latency"]) if r["latency"] else f"not measured: {r.get('not_measured', '')}"
        kinds = ", ".join(r.get("kinds", [])) or "-"
        done = f"{r['converted_layers']} / {r['layers']}" if "layers" in r else "-"
        lines.append(f"| {r['label']} | {kinds} | {done} | {r['mac_ratio']:.3f} | {latency} | "
                     f"{r.get('speedup_text', '-')} | {r.get('vs_mix') or '-'} | {r['error']:.4f} | "
                     f"{_error(r.get('deployed_error'))} | "
                     f"{_reach(r)} | {_yes(r.get('met'))} |")
    return lines


def search_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    names = list(dict.fromkeys(p for r in rows for p in r["phases"]))
    lines = ["| search | torch threads | wall s | CPU s | load before (1/5/15 min) | load after | " + " | ".join(names) +
             " | attempts (final) | cache entries after |",
             "|---|---:|---:|---:|---|---|" + "---:|" * len(names) + "---|---:|"]
    for r in rows:
        load = lambda x: "/".join(f"{v:.2f}" for v in x) if x else "-"  # noqa: E731
        cells = " | ".join(f"{r['phases'].get(n, 0.0):.1f}" for n in names)
        lines.append(f"| {r['label']} | {r.get('torch_threads', '-')} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{load(r['load_before'])} | "
                     f"{load(r['load_after'])} | {cells} | {len(r['attempts'])} ({r['final_attempt']}) | "
                     f"{r.get('cache_entries_after', '-')} |")
    return lines


def attempts_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ["| search | request | budget ms | precision chosen | attempts: predicted -> measured ms (search's quick "
             "build) | met | other precisions searched |", "|---|---|---:|---|---|---|---|"]
    for r in rows:
        steps = "; ".join(f"{a['predicted_ms']:.2f} -> {a['measured_ms']:.2f}" for a in r["attempts"])
        others = "; ".join(f"{p}: {text}" for p, text in r.get("other_precisions", {}).items()) or "-"
        lines.append(f"| {r['label']} | {r['request']} | {r['budget_ms']:.3f} | {r['precision']} | {steps} | "
                     f"{_yes(r['met'])} | {others} |")
    return lines


def markdown(data: Dict[str, Any]) -> str:
    meta, res = data["meta"], data["results"]
    best, st = res["fastest"], res["search_time"]
    versions = ", ".join(v if v.startswith(k) else f"{k} {v}" for k, v in meta["versions"].items())
    lines = [f"# `convert(to='auto')` on {meta['model']}: fidelity against single kinds, and search time", "",
             f"{meta['date']}; {meta['cpu']} ({meta['cores']} logical CPUs), CPU flags {', '.join(meta['cpu_flags'])}; "
             f"torch threads {meta['torch_threads']}, deployments and timings on {meta['threads']} thread; {versions}; "
             f"Python {meta['python']}; leanconv source: {meta.get('git', 'unknown')}. Random weights (`torch.manual_seed(0)`), input {tuple(meta['input_size'])}; "
             f"calibration: {meta['search_images']} seeded random images for every search (candidates fitted on the first "
             f"32, competing mixes scored whole on the rest), output error on "
             f"{meta['held_out_images']} other ones. Command: `{meta['command']}` (one process). "
             "Generated by `benchmarks/auto_search.py`." + (f" {meta['rendered'][0].upper()}{meta['rendered'][1:]}."
                                                            if meta.get("rendered") else ""), ""]
    if meta["quick"]:
        lines += ["**`--quick` dry run: a small model on one target; these numbers say nothing about the goals.**", ""]
    lines += ["## 1. The fastest target for the dense model", "",
              f"Fastest: **{best['target']} {best['precision']}** ({_ms(best['latency_ms'])} ms); every search below "
              "runs there.", "", res["targets_markdown"],
              "## 2. Goal 2: the mix against single-kind conversions at the same budget", "",
              f"The mix: `convert(to='auto', target='{best['target']}', target_speedup={TARGET_SPEEDUP:g})` "
              f"(budget {res['budget_ms']:.3f} ms on {best['target']} {res['precision']}); each single kind: "
              f"`kinds=[kind], latency_budget={res['budget_ms']:.3f}, precision='{res['precision']}'` (the mix's "
              "budget, and the precision the mix chose, so that every conversion is compared on the same deployment); "
              "all with `accept_slower=True`. Then all measured interleaved on the target (the real deployment "
              f"build) in {' and '.join(res['measured_precisions'])}, {meta['rounds']} rounds: latency in "
              f"{res['precision']}, median (range over rounds); speedup per round against the dense model at its best "
              "over those precisions. Output error: relative error of the logits against the original model, fp32 "
              f"eager, on the {meta['held_out_images']} held-out images; as deployed: the same images one at a time "
              "through the deployed model (its own build and calibration), against the original in fp32 eager, so "
              "the int8 ranges count too. \"Reaches the mix's latency\", by the rounds: the per-round ratio mix ms / "
              "its ms is not below 1 in every round (faster, or within noise); by the ranges (looser): its fastest "
              "round is no slower than the mix's slowest.", ""]
    lines += conversions_table(res["conversions"])
    fid = res["fidelity"]
    dep, loose = res.get("fidelity_deployed"), res.get("fidelity_ranges")
    lines += ["", f"**Goal 2 ({fid['verdict']}):** {fid['text']} (\"reaches\" by the interleaved rounds).", ""]
    if loose is not None and loose != fid:
        lines += [f"With the looser \"reaches\" (overlapping ranges): {loose['verdict']}: {loose['text']}.", ""]
    if dep is not None:
        lines += [f"Judged on the output error as deployed ({best['target']} {res['precision']}, the held-out images "
                  f"through the deployed model, against the original in fp32): {dep['verdict']}: {dep['text']}.", ""]
    lines += [
              "Each search's correction loop (whole model timed by the search's quick build; the measured "
              "latencies above are the real deployment's):", ""]
    lines += attempts_table([st["cold"], *res["single_searches"]])
    lines += ["", "Per-layer choice of the mix:", "", "| layer | chosen | why |", "|---|---|---|"]
    lines += [f"| {p} | {c} | {st['cold']['reasons'][p]} |" for p, c in st["cold"]["choice"].items()]
    lines += ["", "## 3. Goal 3: search time", "",
              f"The whole `convert(to='auto', target_speedup={TARGET_SPEEDUP:g})` call on {best['target']} (dense "
              "baseline, every layer's candidates fitted and timed, correction loop, final refit on the calibration "
              "images), every precision of the target searched: once with an empty cache (a fresh "
              "`LEANCONV_CACHE_DIR`: no timings, no fits), then with it warm (judged on these two, at torch's own "
              "thread count), then warm again with `torch.set_num_threads(1)` (the fits' many small ops on two "
              "threads of a busy 2-core machine wait on each other); the single-kind searches of section 2 ran on the "
              "same warm cache. Last, the same request on one target and precision (`precision` given: the one the "
              "mix chose) in a cache folder of its own, empty then warm (judged on these two). Phases from the "
              "timestamped `progress` lines (seconds). The machine is shared: the load average and the process CPU "
              "seconds are recorded.",
              ""]
    one = st.get("one_precision")
    lines += search_table([st["cold"], *st["warm_rows"], *res["single_searches"],
                           *([one["cold"], one["warm"]] if one else [])])
    warm_same = all(r["same_choice_as_cold"] for r in st["warm_rows"])
    lines += ["", f"**Goal 3, every precision of {best['target']} searched ({_holds(st['verdict'])}):** "
              f"{st['verdict']['text']}, on {meta['cores']} logical CPUs. The warm search "
              f"{'chose the same mix (layers and precision)' if warm_same else 'did not all choose the same mix as the first (layers or precision)'}."]
    if one:
        lines += ["", f"**Goal 3, one target and precision ({best['target']} {one['precision']}, `precision="
                  f"'{one['precision']}'`, its own fresh cache; {_holds(one['verdict'])}):** {one['verdict']['text']}."]
    lines += [
              "", "## Reading", "", *data["reading"], "", "## Measured deployments", "", res["measured_markdown"]]
    return "\n".join(lines) + "\n"


def _holds(verdict: Dict[str, Any]) -> str:
    return "holds" if verdict["holds"] else "does not hold"


def reading(res: Dict[str, Any]) -> List[str]:
    """A short reading of the numbers, generated from them (so it cannot drift from the tables)."""
    rows = {r["label"]: r for r in res["conversions"]}
    mix, st = rows["mix"], res["search_time"]
    out = []
    if mix["latency"]:
        out.append(f"- The mix measures {_ms(mix['latency'])} ms on {res['fastest']['target']} {res['precision']} "
                   f"against a budget of {res['budget_ms']:.3f} ms: {mix['speedup_text']} against the dense model at "
                   f"its best (asked: {TARGET_SPEEDUP:g}x), output error {mix['error']:.4f}.")
    singles = [r for r in res["conversions"] if r["label"] not in ("dense", "mix", "mix (warm rerun)")]
    for r in singles:
        where = "reaches" if r.get("reaches_mix") else "does not reach"
        out.append(f"- {r['label']} alone at the same budget: {_ms(r['latency'])} ms, error {r['error']:.4f}; "
                   f"{where} the mix's latency (mix/this per round: {r.get('vs_mix') or '-'}).")
    out.append(f"- Goal 2: {res['fidelity']['verdict']}"
               + (f" (with overlapping ranges as \"reaches\": {res['fidelity_ranges']['verdict']})"
                  if res.get("fidelity_ranges") else "")
               + (f"; on the error as deployed: {res['fidelity_deployed']['verdict']}" if res.get("fidelity_deployed")
                  else "")
               + f". Goal 3: {st['verdict']['text']}"
               + (f"; on {res['fastest']['target']} {st['one_precision']['precision']} alone: "
                  f"{st['one_precision']['verdict']['text']}" if st.get("one_precision") else "") + ".")
    noisy = [r["label"] for r in singles if r.get("vs_mix") and "within noise" in r["vs_mix"]]
    if noisy:
        out.append(f"- Within noise of the mix's latency: {', '.join(noisy)}; the latency comparison with those is "
                   "not decided by this run.")
    slower = [r for r in singles if r.get("vs_mix_spread") and r["vs_mix_spread"]["high"] < 1.0]
    for r in slower:
        gap = (r["error"] - mix["error"]) / mix["error"] if mix["error"] else math.inf
        out.append(f"- {r['label']} alone is slower than the mix in every round ({r['vs_mix']}) with an output error "
                   f"{abs(gap):.2%} {'above' if gap > 0 else 'below'} the mix's ({r['error']:.6f} against "
                   f"{mix['error']:.6f}).")
    dense = rows["dense"]
    cold = st["cold"]
    if dense.get("latency"):
        out.append(f"- The search's own dense baseline was {cold['baseline_ms']:.3f} ms ({cold['baseline_precision']}, "
                   f"measured inside the first search and cached for the later ones), the budget its half; the dense "
                   f"model measured {_ms(res['fastest']['latency_ms'])} ms in section 1 and {_ms(dense['latency'])} ms "
                   "interleaved with the conversions.")
    warm = {r["torch_threads"]: r for r in st["warm_rows"] if r.get("torch_threads") is not None}
    if len(warm) > 1:
        text = "; ".join(f"{n} thread(s): {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, fitting "
                         f"{r['phases'].get('fit candidates', 0.0):.1f} s (1-min load before {r['load_before'][0]:.2f})"
                         for n, r in sorted(warm.items()) if r.get("load_before"))
        out.append(f"- Warm searches by torch thread count: {text}.")
    cores = res.get("cores") or 2
    busy = [r["label"] for r in [cold, *st["warm_rows"]] if r.get("load_before") and r["load_before"][0] > cores]
    if busy:
        out.append(f"- Other processes competed for the {cores} CPUs during {', '.join(busy)} (1-min load average "
                   f"above {cores} before it, this process included): those wall times are longer than on an idle "
                   "machine; the CPU seconds say how much work the search itself did.")
    return out


def git_state() -> str:
    """The commit the run used, and the source files changed from it (the run used those as they were)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True,
                                 text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit (no git)"
    files = [line[3:] for line in changed if line.strip()]
    return f"commit {commit}" + (f" with uncommitted changes to {', '.join(files)}" if files else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--force", action="store_true", help="replace existing result files")
    parser.add_argument("--quick", action="store_true", help="digits CNN, onnxruntime fp32, 2 kinds (dry run)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: judge and write the Markdown again from --out's auto_search.json")
    args = parser.parse_args(argv)
    paths = [args.out / "auto_search.json", args.out / "auto_search.md"]
    if args.render:
        return render(paths)
    if any(p.exists() for p in paths) and not args.force:
        print(f"refusing to overwrite {args.out}/auto_search.*: pass --force", file=sys.stderr)
        return 2
    from leanconv.deploy.target import cpu_flags, cpu_name, runtime_version

    setup = Setup(args.quick)
    versions = {"leanconv": getattr(leanconv, "__version__", "?"), "torch": torch.__version__}
    for name in ("onnxruntime", "openvino"):
        try:
            versions[name] = runtime_version(name)
        except Exception as error:  # not installed: say so
            versions[name] = f"unavailable ({type(error).__name__})"
    meta = {"model": setup.name, "input_size": list(setup.input_size), "quick": args.quick,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
            "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "threads": 1, "python": platform.python_version(), "versions": versions,
            "command": "python benchmarks/auto_search.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "rounds": setup.rounds, "min_run_time": setup.min_run_time, "search_images": SEARCH_IMAGES,
            "held_out_images": HELD_OUT_IMAGES, "kinds": setup.searched, "target_speedup": TARGET_SPEEDUP,
            "git": git_state(), "goals_s": {"cold": COLD_GOAL_S, "warm": WARM_GOAL_S}, "weights": "random (torch.manual_seed(0))"}
    data = {"meta": meta, "results": judge(run(setup))}
    data["reading"] = reading({**data["results"], "cores": meta["cores"]})
    args.out.mkdir(parents=True, exist_ok=True)
    write(paths, data)
    return 0


def write(paths: Sequence[Path], data: Dict[str, Any]) -> None:
    write_atomic(paths[0], json.dumps(data, indent=1) + "\n")
    write_atomic(paths[1], markdown(data))
    print(markdown(data))


def render(paths: Sequence[Path]) -> int:
    """Judge the stored numbers again and rewrite both files (the measurements are kept as they are)."""
    data = json.loads(paths[0].read_text())
    data["results"] = judge(data["results"])
    data["reading"] = reading({**data["results"], "cores": data["meta"]["cores"]})
    data["meta"]["rendered"] = (f"verdicts and Markdown written again from the stored numbers by "
                                f"`python benchmarks/auto_search.py --render` on "
                                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    write(paths, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
