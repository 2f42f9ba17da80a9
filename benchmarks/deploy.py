"""Realized efficiency of the rank-1 depthwise separable digits CNN in each deployment setting.

Trains the digits CNN (seeded), converts it with ``leanconv.convert(model, to="dsconv", rank=1,
input_size=(1, 1, 32, 32), exclude=["features.conv1*"])`` and measures both models at batch 1
and 16 in every deployment setting (``leanconv.bench.realized_efficiency``: interleaved
rounds, medians), for each thread count asked for. Realized efficiency = speedup / MAC
reduction. A per-stage breakdown of both models in their fastest setting shows where the
time goes (the first conv, 1 -> 32 channels, is not converted and costs the same in both).
Writes ``deploy.json`` and ``deploy.md`` under ``--out``.

    python benchmarks/deploy.py [--out benchmarks/results] [--force] [--quick] [--compile] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List

import torch

import leanconv
from leanconv._files import write_atomic
from leanconv.bench import DEFAULT_SETTINGS, SETTINGS, measure_latency, prepare, realized_efficiency
from leanconv.data import load_digits
from leanconv.models.digits import train_digits_cnn


@torch.no_grad()
def accuracy(model, data) -> float:
    return (model.eval()(data.test_x).argmax(1) == data.test_y).float().mean().item()


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 training epoch, batch 1, short runs (a smoke run)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes on 2 cores)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: torch's)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved repeats (default 3; quick 1)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement (default 0.3)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    targets = [out / "deploy.json", out / "deploy.md"]
    if any(p.exists() for p in targets) and not args.force:
        print(f"refusing to overwrite {out}/deploy.*: pass --force", file=sys.stderr)
        return 2
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1] if args.quick else [1, 16])
    rounds = args.rounds or (1 if args.quick else 3)
    min_run_time = args.min_run_time or (0.02 if args.quick else 0.3)

    data = load_digits()
    print("training the digits CNN ...", file=sys.stderr)
    original = train_digits_cnn(data, epochs=1 if args.quick else 8)
    converted = leanconv.convert(original, to="dsconv", rank=1, input_size=(1, 1, 32, 32),
                                 exclude=["features.conv1*"]).model.eval()
    unfolded_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in leanconv.fuse(converted).modules())
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
    meta = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "loadavg_end": list(os.getloadavg()),
            "accuracy_original": accuracy(original, data), "accuracy_converted_no_refit": accuracy(converted, data),
            "batchnorms_left_after_fuse_converted": unfolded_bn, "settings": list(SETTINGS if args.compile else DEFAULT_SETTINGS),
            "rounds": rounds, "min_run_time": min_run_time, "quick": args.quick}
    lines = ["# Deployment settings: realized efficiency of the rank-1 dsconv digits CNN", "",
             f"torch {meta['torch']}, {meta['cpu_count']} CPUs, float32, rounds {rounds} (interleaved, median), "
             f"{min_run_time} s per measurement; load average at the end {meta['loadavg_end'][0]:.1f} "
             "(other jobs shared this machine). Realized efficiency = speedup / MAC reduction; the headline "
             "compares each model in its own fastest setting.", ""]
    for run in runs:
        lines += [f"## batch {run['batch']}, {run['threads']} thread(s)", "", run["markdown"], "",
                  "Where the time goes (each model in its fastest setting, ms per stage):", "",
                  "| stage | original | converted |", "|---|---:|---:|"]
        for stage in run["breakdown"]["original"]:
            lines.append(f"| {stage} | {run['breakdown']['original'][stage]:.3f} | "
                         f"{run['breakdown']['converted'][stage]:.3f} |")
        lines.append("")
    lines.append(f"BatchNorms left in the converted model after `leanconv.fuse`: {unfolded_bn}.")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(targets[0], json.dumps({"meta": meta, "runs": [{k: v for k, v in r.items() if not k.endswith("markdown")}
                                                                for r in runs]}, indent=2))
    write_atomic(targets[1], "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
