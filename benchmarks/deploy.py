"""The demo, run once, and its models measured in every deployment setting.

Runs ``leanconv demo`` as the command does (:func:`leanconv.demo.run_demo`: the digits CNN
trained or taken from the cache, converted to rank-1 depthwise separable convs with the stem
dense, refit on 256 images, distilled for 3 epochs, each model measured at batch 1 and 16 in its
fastest deployment setting) and records its summary: the table the README quotes, and the two
plots the README shows. Then it measures the demo's original and its distilled converted model
in every deployment setting (``leanconv.bench.realized_efficiency``: interleaved rounds,
medians) for each thread count asked for, with a per-stage breakdown of both models in their
fastest setting (the first conv, 1 -> 32 channels, is not converted and costs the same in both).
Realized efficiency = speedup / MAC reduction. Writes ``deploy.json``, ``deploy.md``,
``deploy.candidates.png`` and ``deploy.layers.png`` under ``--out``.

    python benchmarks/deploy.py [--out benchmarks/results] [--force] [--quick] [--compile] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import leanconv
from leanconv._files import write_atomic
from leanconv.bench import DEFAULT_SETTINGS, SETTINGS, measure_latency, prepare, realized_efficiency
from leanconv.demo import run_demo, trained_digits_cnn

DEMO_EPOCHS = 3  # the demo's distillation epochs (leanconv demo --epochs default)


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


def demo_summary(result: Any, test_images: int, epochs: int) -> Dict[str, Any]:
    """The numbers of one demo run that the README's table quotes."""
    return {"test_images": test_images, "epochs": epochs, "threads": torch.get_num_threads(),
            "accuracy_original": result.original.accuracy, "accuracy_refit": result.chosen.accuracy,
            "accuracy_distilled": result.distilled_accuracy, "chosen": result.chosen.label,
            "params_original": result.original.params, "params_converted": result.chosen.params,
            "macs_original": result.original.macs, "macs_converted": result.chosen.macs,
            "efficiency": {str(batch): report.to_dict() for batch, report in sorted(result.efficiency.items())}}


def demo_table(summary: Dict[str, Any]) -> List[str]:
    """The README's demo table, as Markdown lines."""
    s = summary
    lines = ["| | original | rank-1 depthwise separable |", "|---|---:|---:|",
             f"| test accuracy ({s['test_images']} images) | {s['accuracy_original']:.2%} | "
             f"{s['accuracy_refit']:.2%} after the refit (no training), {s['accuracy_distilled']:.2%} after "
             f"{s['epochs']} epochs of distillation |",
             f"| params | {s['params_original']:,} | {s['params_converted']:,} |",
             f"| MACs per image | {s['macs_original']:,} | {s['macs_converted']:,} "
             f"({s['macs_original'] / s['macs_converted']:.2f}x fewer) |"]
    for batch, report in sorted(s["efficiency"].items(), key=lambda item: -int(item[0])):
        o, c = report["original"], report["converted"]
        o_ms = next(r["latency_ms"] for r in o["results"] if r["setting"] == o["best"])
        c_ms = next(r["latency_ms"] for r in c["results"] if r["setting"] == c["best"])
        lines.append(f"| batch {batch}, fastest setting | {o_ms:.2f} ms ({o['best']}) | {c_ms:.2f} ms "
                     f"({c['best']}): {_speedup_cell(report)} |")
    return lines


def _speedup_cell(report: Dict[str, Any]) -> str:
    """Speedup and realized efficiency, or only the speedup's range when it is within the noise."""
    if report.get("efficiency") is None:
        low, high = report["speedup_range"]
        return f"{low:.2f}x to {high:.2f}x over the rounds: within the noise, no efficiency figure"
    return f"{report['speedup']:.2f}x, realized efficiency {report['efficiency']:.2f}"


def _run_demo(out: Path) -> Dict[str, Any]:
    """Run the demo (no output folder of its own), save its plots under ``out``, return its summary
    with the distilled converted model under ``"model"``."""
    from leanconv.data import load_data
    from leanconv.plots import plot_candidates, plot_layers

    result = run_demo(out=None, epochs=DEMO_EPOCHS)
    out.mkdir(parents=True, exist_ok=True)
    plot_candidates(result, out / "deploy.candidates.png")
    plot_layers(result, out / "deploy.layers.png")
    summary = demo_summary(result, len(load_data("digits").test), DEMO_EPOCHS)
    summary["model"] = result.model
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
    demo["accuracy_rank1_no_refit"] = _accuracy_without_refit(original)
    return original, demo.pop("model").eval(), demo


@torch.no_grad()
def _accuracy_without_refit(original) -> float:
    """Test accuracy of the demo's rank-1 conversion (stem dense) with no refit and no training:
    the weights alone, what the refit starts from."""
    from leanconv.data import load_data
    from leanconv.optimization import evaluate, stem_paths

    converted = leanconv.convert(original, to="dsconv", rank=1, input_size=(1, 1, 32, 32),
                                 exclude=stem_paths(original, 1)).model
    return evaluate(converted, load_data("digits").test)


def _arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quick", action="store_true", help="no demo, batch 1, short runs (a smoke run)")
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
              "from the measurements, so the latencies, speedups and efficiencies below are not reliable.** "
              "Accuracies, params and MACs do not depend on the load.")


def _demo_markdown(demo: Optional[Dict[str, Any]]) -> List[str]:
    if demo is None:
        return ["## `leanconv demo`", "", "Not run (a quick run): the models below are the trained original and "
                "its rank-1 conversion without refit or distillation.", ""]
    return [f"## One run of `leanconv demo` ({demo['threads']} threads)", "",
            "The table the README quotes. The converted model is the demo's chosen candidate "
            f"({demo['chosen']}); each model is timed in its own fastest deployment setting.", "",
            *demo_table(demo), "",
            f"The same rank-1 conversion without the refit (the optimal weights alone, no training): "
            f"{demo['accuracy_rank1_no_refit']:.2%} test accuracy.", "",
            "![candidates tried](deploy.candidates.png)", "",
            "![per layer](deploy.layers.png)", ""]


def _markdown(meta: Dict[str, Any], demo: Optional[Dict[str, Any]], runs: List[Dict]) -> List[str]:
    lines = ["# The demo, and its models in every deployment setting", "",
             f"torch {meta['torch']}, {meta['cpu_count']} CPUs, float32; load average {meta['loadavg_start'][0]:.1f} "
             f"at the start, {meta['loadavg_end'][0]:.1f} at the end. "
             "Written by `python benchmarks/deploy.py --force --threads 1,2`.", "",
             *([OVERLOADED, ""] if meta["overloaded"] else []),
             *_demo_markdown(demo),
             "## The same two models in every deployment setting", "",
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
                 f"{meta['batchnorms_left_after_fuse_converted']} (the BN after each depthwise separable block "
                 "is folded into its pointwise conv).")
    return lines


def main(argv=None) -> int:
    args = _arguments(argv)
    out = Path(args.out)
    targets = [out / name for name in ("deploy.json", "deploy.md", "deploy.candidates.png", "deploy.layers.png")]
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
            "rounds": rounds, "min_run_time": min_run_time, "quick": args.quick}
    lines = _markdown(meta, demo, runs)
    write_atomic(targets[0], json.dumps({"meta": meta, "demo": demo,
                                         "runs": [{k: v for k, v in r.items() if k != "markdown"} for r in runs]},
                                        indent=2))
    write_atomic(targets[1], "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
