"""The demo, run once, and its models measured in every deployment setting.

Runs ``leanconv demo`` as the command does (:func:`leanconv.demo.run_demo`: the digits CNN
trained or taken from the cache; each 3x3 conv's kind and rank chosen by latency measured on the
deployment target where the original runs fastest, for a 2x speedup at batch 16 against the
original at its best there (:mod:`leanconv.conversion.auto`; the one-channel stem dense); refit
on 256 images, distilled for ``DISTILL_EPOCHS`` epochs; both models measured at batch 1 and 16 on every
deployment target, each at its best) and records its summary: the per-layer mix, whether the
search met its request, the honest speedups with their ranges over rounds, the table the README
quotes and the plots the README shows. For reference it also records the uniform rank-1 depthwise
separable conversion of the same original (stem dense) with and without the same refit. Then it
measures the demo's original and its distilled converted model in every PyTorch deployment
setting (``leanconv.bench.realized_efficiency``: interleaved rounds, medians) for each thread
count asked for, with a per-stage breakdown of both models in their fastest setting (the first
conv, 1 -> 32 channels, is not converted and costs the same in both). Realized efficiency =
speedup / MAC reduction. Writes ``deploy.json``, ``deploy.md``, ``deploy.candidates.png``,
``deploy.layers.png`` and ``deploy.front.png`` under ``--out``.

A ``--quick`` run (a smoke run) has no demo: it measures the trained original against its
rank-1 depthwise separable conversion (no refit, no distillation), labelled as such.

    python benchmarks/deploy.py [--out benchmarks/results] [--force] [--quick] [--compile] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import leanconv
from leanconv._files import write_atomic
from leanconv.bench import DEFAULT_SETTINGS, SETTINGS, measure_latency, prepare, realized_efficiency
from leanconv.demo import DISTILL_EPOCHS, run_demo, trained_digits_cnn

CALIB_IMAGES = 256  # optimize's default calib_images, the demo's refit
RANK1 = "the rank-1 depthwise separable conversion (stem dense)"
QUICK_CONVERTED = f"{RANK1}, no refit, no distillation (a quick run has no demo)"
DEMO_CONVERTED = "the demo's per-layer mix, refit and distilled"


def stage_breakdown(model, setting: str, batch: int, threads: int, min_run_time: float) -> Dict[str, float]:
    """Latency of each top-level stage (features.conv1..4, pool + fc) in ``setting``, ms (a frozen
    or compiled model has no stages left to time: its eager twin, fused, is timed instead)."""
    setting = {"frozen": "fused", "frozen_channels_last": "fused_channels_last", "compiled": "fused"}.get(setting, setting)
    module, x = prepare(model, setting, torch.randn(batch, 1, 32, 32))
    times: Dict[str, float] = {}
    with torch.inference_mode():
        for name, stage in module.features.named_children():
            times[f"features.{name}"] = measure_latency(stage, x, min_run_time, num_threads=threads)
            x = stage(x)
        head = torch.nn.Sequential(module.pool, torch.nn.Flatten(1), module.fc)
        times["pool+fc"] = measure_latency(head, x, min_run_time, num_threads=threads)
    return times


def _fastest(row: Any) -> Dict[str, Any]:
    """Where one model is fastest: target, the precision that ran, latency (median and range), accuracy."""
    latency = row.latency
    return {"target": row.target, "precision": row.ran or row.precision, "asked_precision": row.precision,
            "ms": latency.median, "ms_low": latency.low, "ms_high": latency.high, "accuracy": row.accuracy}


def targets_summary(report: Any) -> Dict[str, Any]:
    """One batch's measurement on every deployment target: where each model is fastest and the
    honest speedup (the original at its best against the converted model at its best, per round)."""
    speedup = report.speedup("original", "converted")
    efficiency = report.efficiency("original", "converted")
    return {"threads": report.threads, "rounds": speedup.rounds,
            "original": _fastest(report.best("original")), "converted": _fastest(report.best("converted")),
            "speedup": {"median": speedup.median, "low": speedup.low, "high": speedup.high},
            "within_noise": speedup.straddles(1.0),
            "efficiency": None if efficiency is None else {"median": efficiency.median, "low": efficiency.low,
                                                           "high": efficiency.high},
            "summary": report.summary("original", "converted"), "report": report.to_dict()}


def search_summary(search: Any, threads: Optional[int]) -> Dict[str, Any]:
    """The per-layer search: the mix, per layer the candidate chosen, and whether the request was met."""
    from leanconv.optimization import mix_text

    chosen = {path: layer.chosen or layer.dense for path, layer in search.layers.items()}
    return {"mix": mix_text(search), "headline": search.headline(), "met": search.met, "request": search.request,
            "target": search.target, "precision": search.precision, "batch": int(search.input_size[0]),
            "speedup": search.speedup, "baseline_ms": search.baseline_ms,
            "baseline_precision": search.baseline_precision, "budget_ms": search.budget_ms,
            "measured_ms": search.final.measured_ms, "alternatives": dict(search.alternatives),
            "threads": threads,
            "layers": {path: m.candidate.label for path, m in chosen.items()},
            "kinds": {path: m.candidate.kind for path, m in chosen.items()}}


def demo_summary(result: Any, test_images: int, epochs: int) -> Dict[str, Any]:
    """The numbers of one demo run that the README's table quotes."""
    return {"test_images": test_images, "epochs": epochs, "threads": torch.get_num_threads(),
            "accuracy_original": result.original.accuracy, "accuracy_refit": result.chosen.accuracy,
            "accuracy_distilled": result.distilled_accuracy, "chosen": result.chosen.label,
            "params_original": result.original.params, "params_converted": result.chosen.params,
            "macs_original": result.original.macs, "macs_converted": result.chosen.macs,
            "search": search_summary(result.chosen.conversion.search, (result.plan.deployment or {}).get("threads")),
            "plan": result.plan.to_dict(),
            "notes": list(result.notes),
            "targets": {str(batch): targets_summary(report) for batch, report in sorted(result.targets.items())},
            "efficiency": {str(batch): report.to_dict() for batch, report in sorted(result.efficiency.items())}}


def demo_table(summary: Dict[str, Any]) -> List[str]:
    """The README's demo table, as Markdown lines."""
    s = summary
    lines = ["| | original | per-layer mix |", "|---|---:|---:|",
             f"| test accuracy ({s['test_images']} images) | {s['accuracy_original']:.2%} | "
             f"{s['accuracy_refit']:.2%} after the refit (no training), {s['accuracy_distilled']:.2%} after "
             f"{s['epochs']} epochs of distillation |",
             f"| params | {s['params_original']:,} | {s['params_converted']:,} |",
             f"| MACs per image | {s['macs_original']:,} | {s['macs_converted']:,} "
             f"({s['macs_original'] / s['macs_converted']:.2f}x fewer) |",
             f"| per-layer choice (batch {s['search']['batch']}) | dense | {s['search']['mix']} |"]
    for batch, report in sorted(s["targets"].items(), key=lambda item: -int(item[0])):
        lines.append(targets_row(batch, report))
    return lines


def targets_row(batch: str, report: Dict[str, Any]) -> str:
    """``| batch B, fastest deployment | ms (target precision) | ms (target precision): speedup |``."""
    o, c = report["original"], report["converted"]
    return (f"| batch {batch}, fastest deployment | {o['ms']:.3f} ms ({o['target']} {o['precision']}) | "
            f"{c['ms']:.3f} ms ({c['target']} {c['precision']}): {speedup_text(report)} vs the original at its best |")


def speedup_text(report: Dict[str, Any]) -> str:
    """``'2.03x (1.90-2.10)'``: median and range over rounds; only the range when it straddles 1."""
    s = report["speedup"]
    if report["within_noise"]:
        return f"{s['low']:.2f}-{s['high']:.2f}x, within noise,"
    return f"{s['median']:.2f}x ({s['low']:.2f}-{s['high']:.2f})"


def _run_demo(out: Path) -> Dict[str, Any]:
    """Run the demo (no output folder of its own), save its plots under ``out``, return its summary
    with the distilled converted model under ``"model"`` and the plan under ``"_plan"``."""
    from leanconv.data import load_data
    from leanconv.plots import plot_candidates, plot_front, plot_layers

    result = run_demo(out=None, epochs=DISTILL_EPOCHS)
    out.mkdir(parents=True, exist_ok=True)
    plot_candidates(result, out / "deploy.candidates.png")
    plot_layers(result, out / "deploy.layers.png")
    plot_front(result.chosen.conversion.search, out / "deploy.front.png")
    summary = demo_summary(result, len(load_data("digits").test), DISTILL_EPOCHS)
    summary["model"], summary["_plan"] = result.model, result.plan
    return summary


def _models(out: Path, quick: bool):
    """(original, converted, demo summary): the demo's two models, or in a quick run the trained
    original and its rank-1 conversion without refit or distillation (no demo, summary None)."""
    if quick:
        original = trained_digits_cnn(progress=False)
        converted = leanconv.convert(original, to="dsconv", rank=1, input_size=(1, 1, 32, 32),
                                     exclude=["features.conv1*"]).model
        return original, converted.eval(), None
    demo = _run_demo(out)
    original = trained_digits_cnn(progress=False)
    demo["accuracy_no_refit"] = _accuracy_without_refit(original, demo.pop("_plan"))
    demo["rank1"] = _rank1_reference(original)
    return original, demo.pop("model").eval(), demo


@torch.no_grad()
def _accuracy_without_refit(original, plan) -> float:
    """Test accuracy of the demo's chosen plan with the optimal factorized weights and no refit
    and no training: the weights alone, what the refit starts from."""
    from leanconv.conversion.surgery import build_module, factorize_conv, set_module
    from leanconv.data import load_data
    from leanconv.optimization import evaluate

    model = copy.deepcopy(original).eval()
    for path, layer in plan.layers.items():
        if layer.kind == "dense":
            continue
        conv = original.get_submodule(path)
        set_module(model, path, build_module(conv, layer.kind, layer.options,
                                             factorize_conv(conv, layer.kind, layer.options)))
    return evaluate(model, load_data("digits").test)


@torch.no_grad()
def _rank1_reference(original) -> Dict[str, Any]:
    """The uniform rank-1 depthwise separable conversion of the same original (stem dense), for
    comparison: test accuracy with the optimal weights alone and after the demo's refit (the same
    256 seeded training images), its params and MACs."""
    from leanconv.data import load_data
    from leanconv.optimization import calibration_batches, evaluate, stem_paths

    data = load_data("digits")
    kwargs = dict(to="dsconv", rank=1, input_size=data.input_size(1), exclude=stem_paths(original, 1))
    plain = leanconv.convert(original, **kwargs).model.eval()
    refit = leanconv.convert(original, calib=calibration_batches(data.train, CALIB_IMAGES, seed=0), **kwargs).model.eval()
    return {"accuracy_no_refit": evaluate(plain, data.test), "accuracy_refit": evaluate(refit, data.test),
            "params": sum(p.numel() for p in refit.parameters()),
            "macs": leanconv.profile(refit, data.input_size(1)).total_macs}


def _arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="no demo: the rank-1 conversion without refit, batch 1, short runs (a smoke run)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes on 2 cores)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: torch's)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved repeats (default 3; quick 1)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement (default 0.3)")
    return parser.parse_args(argv)


def _measure(original, converted, args, threads: List[int], batches: List[int], rounds: int,
             min_run_time: float) -> List[Dict]:
    """Both models in every setting, per thread count and batch, with the per-stage breakdown."""
    runs: List[Dict] = []
    for thread_count in threads:
        for batch in batches:
            report = realized_efficiency(original, converted, (batch, 1, 32, 32), compile=args.compile,
                                         threads=thread_count, rounds=rounds, min_run_time=min_run_time,
                                         progress=True)
            breakdown = {name: stage_breakdown(model, rep.best.setting, batch, thread_count, min_run_time)
                         for name, model, rep in (("original", original, report.original),
                                                  ("converted", converted, report.converted))}
            runs.append({"threads": thread_count, "batch": batch, "report": report.to_dict(),
                         "markdown": report.to_markdown(), "breakdown": breakdown})
            print(f"threads {thread_count} batch {batch}: efficiency {report.efficiency:.2f} "
                  f"(speedup {report.speedup:.2f}x, MACs {report.mac_reduction:.2f}x fewer)", file=sys.stderr)
    return runs


OVERLOADED = ("**The load average exceeded the CPU count during this run: other processes took CPU time "
              "from the measurements, so the latencies, speedups and efficiencies below are not reliable, and "
              "the per-layer choice, made by timing, may differ on an idle machine.** "
              "Accuracies, params and MACs of the models it chose do not depend on the load.")


def _demo_markdown(demo: Optional[Dict[str, Any]]) -> List[str]:
    if demo is None:
        return ["## `leanconv demo`", "", f"Not run (a quick run): the models below are the trained original and "
                f"{QUICK_CONVERTED}.", ""]
    search, rank1 = demo["search"], demo["rank1"]
    lines = [f"## One run of `leanconv demo` (training, refit and distillation on {demo['threads']} threads; the "
             f"search and the deployment targets timed on {search['threads']} thread(s))", "",
             "The table the README quotes. The converted model is the demo's per-layer mix, each 3x3 conv's kind "
             "and rank chosen by latency measured on the deployment target where the original runs fastest at "
             f"batch {search['batch']} (the one-channel stem dense), refit on {CALIB_IMAGES} images and distilled; "
             "each model is then timed on every deployment target at batch 1 and 16 and reported at its own best.", "",
             *demo_table(demo), "",
             f"The search: {search['headline']}.", ""]
    if search["alternatives"]:
        lines += [f"Other precisions searched on {search['target']}:", "",
                  *[f"- {precision}: {text}" for precision, text in search["alternatives"].items()], ""]
    lines += ["| layer | chosen |", "|---|---|", *[f"| {p} | {label} |" for p, label in search["layers"].items()], ""]
    for batch, report in sorted(demo["targets"].items(), key=lambda item: int(item[0])):
        o, c = report["original"], report["converted"]
        accuracy = "" if o["accuracy"] is None or c["accuracy"] is None else (
            f" Test accuracy as deployed there: original {o['accuracy']:.2%}, converted {c['accuracy']:.2%}.")
        lines += [f"Batch {batch}, {report['threads']} thread(s), {report['rounds']} interleaved rounds: "
                  f"{report['summary']}.{accuracy}", ""]
    lines += [f"The same per-layer plan without the refit (the optimal factorized weights alone, no training): "
              f"{demo['accuracy_no_refit']:.2%} test accuracy.", "",
              f"For reference, {RANK1} of the same original, {rank1['params']:,} params and {rank1['macs']:,} MACs: "
              f"{rank1['accuracy_no_refit']:.2%} test accuracy with the optimal weights alone, "
              f"{rank1['accuracy_refit']:.2%} after the same refit on {CALIB_IMAGES} images.", ""]
    if demo["notes"]:
        lines += ["Notes from the run:", "", *[f"- {note}" for note in demo["notes"]], ""]
    lines += ["![candidates tried](deploy.candidates.png)", "", "![per layer](deploy.layers.png)", "",
              "![the per-layer search's front](deploy.front.png)", ""]
    return lines


def _markdown(meta: Dict[str, Any], demo: Optional[Dict[str, Any]], runs: List[Dict]) -> List[str]:
    lines = ["# The demo, and its models in every deployment setting", "",
             f"torch {meta['torch']}, {meta['cpu_count']} CPUs, float32; load average {meta['loadavg_start'][0]:.1f} "
             f"at the start, {meta['loadavg_end'][0]:.1f} at the end. "
             f"Written by `{meta['command']}`.", "",
             *([OVERLOADED, ""] if meta["overloaded"] else []),
             *_demo_markdown(demo),
             "## The same two models in every PyTorch deployment setting", "",
             f"The converted model: {meta['converted']}. "
             f"Rounds {meta['rounds']} (interleaved, median), {meta['min_run_time']} s per measurement. "
             "Realized efficiency = speedup / MAC reduction; the headline compares each model in its own "
             "fastest setting.", ""]
    for run in runs:
        lines += [f"## batch {run['batch']}, {run['threads']} thread(s)", "", run["markdown"], "",
                  "Where the time goes (each model in its fastest setting, ms per stage; frozen is timed as "
                  "fused, stage by stage):", "", "| stage | original | converted |", "|---|---:|---:|"]
        for stage in run["breakdown"]["original"]:
            lines.append(f"| {stage} | {run['breakdown']['original'][stage]:.3f} | "
                         f"{run['breakdown']['converted'][stage]:.3f} |")
        lines.append("")
    lines.append(f"BatchNorms left in the converted model after `leanconv.fuse`: "
                 f"{meta['batchnorms_left_after_fuse_converted']} (the BN after each converted block is folded "
                 "into the block's last stage).")
    return lines


def _command(argv) -> str:
    """The command line that wrote the files (with the cache folder, when one was set)."""
    cache = os.environ.get("LEANCONV_CACHE_DIR")
    words = list(argv if argv is not None else sys.argv[1:])
    return (f"LEANCONV_CACHE_DIR={cache} " if cache else "") + " ".join(["python benchmarks/deploy.py", *words])


def main(argv=None) -> int:
    args = _arguments(argv)
    out = Path(args.out)
    targets = [out / name for name in ("deploy.json", "deploy.md", "deploy.candidates.png", "deploy.layers.png",
                                       "deploy.front.png")]
    if any(p.exists() for p in targets) and not args.force:
        print(f"refusing to overwrite {out}/deploy.*: pass --force", file=sys.stderr)
        return 2
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1] if args.quick else [1, 16])
    rounds = args.rounds or (1 if args.quick else 3)
    min_run_time = args.min_run_time or (0.02 if args.quick else 0.3)

    load_start = list(os.getloadavg())
    original, converted, demo = _models(out, args.quick)
    unfolded_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in leanconv.fuse(converted).modules())
    runs = _measure(original, converted, args, threads, batches, rounds, min_run_time)
    load_end = list(os.getloadavg())
    meta = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "loadavg_start": load_start,
            "loadavg_end": load_end, "overloaded": max(load_start[0], load_end[0]) > (os.cpu_count() or 1),
            "batchnorms_left_after_fuse_converted": unfolded_bn,
            "settings": list(SETTINGS if args.compile else DEFAULT_SETTINGS),
            "rounds": rounds, "min_run_time": min_run_time, "quick": args.quick,
            "converted": QUICK_CONVERTED if args.quick else DEMO_CONVERTED,
            "command": _command(argv), "cache_dir": os.environ.get("LEANCONV_CACHE_DIR")}
    lines = _markdown(meta, demo, runs)
    write_atomic(targets[0], json.dumps({"meta": meta, "demo": demo,
                                         "runs": [{k: v for k, v in r.items() if k != "markdown"} for r in runs]},
                                        indent=2, default=str))
    write_atomic(targets[1], "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
