"""How fast the demo's converted model could possibly be: the bound behind its speed goals.

Issue #14 asks the digits demo for an honest speedup of 2x at batch 16 and 3x at batch 1 against
the original at its best, with the one-channel stem kept dense. This script measures, in one
process on this machine, at each batch size:

1. **the original** on every deployment target and precision, each at its best (the honest
   baseline, as ``leanconv demo`` measures it);
2. **the floor**: the original without its three searched stages (``features.conv2..4``,
   conv + BN + ReLU): the stem, the pooling of its output and a classifier. No conversion of
   those stages costs less than nothing, so the original over the floor bounds every speedup
   that keeps the stem, the pooling and the classifier (its accuracy means nothing);
3. **the fastest mix the search finds** on each target that can hold the budget
   (``convert(to='auto', target_speedup=FAR, accept_slower=True)``: every layer at its fastest
   candidate, the request out of reach on purpose), refit on the same 64 calibration images.

All three are timed interleaved on onnxruntime and openvino in each of their precisions, where
the original is fastest at both batch sizes (``benchmarks/results/deploy.md``), with
``leanconv.deploy.measure.measure_targets`` (outputs checked against fp32 eager, int8
calibrated on the demo's images). The trained original comes from the
cache (``leanconv demo`` trains it once).

Writes ``demo_reach.json`` and ``demo_reach.md`` under ``--out`` atomically; refuses to replace
them without ``--force``.

    python benchmarks/demo_reach.py [--force] [--out benchmarks/results] [--rounds 5] [--quick]

``--quick``: batch 1 only, onnxruntime only, 1 round (a dry run; its numbers say nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

import leanconv
from leanconv._files import write_atomic
from leanconv.data import load_data
from leanconv.deploy.measure import measure_targets
from leanconv.demo import TARGET_SPEEDUP, trained_digits_cnn
from leanconv.optimization import calibration_batches

SEARCHED = ("conv2", "conv3", "conv4")  # the stages a demo conversion may change (the stem stays)
FAR = 100.0  # a request no mix reaches: the search returns the fastest it measured
GOALS = {1: 3.0, 16: 2.0}  # issue 14's honest-speedup goals per batch size


def floor_model(original: nn.Module) -> nn.Module:
    """A copy of ``original`` without its :data:`SEARCHED` stages: the stem, the pooling of its
    output and a classifier on its channels (the first columns of ``fc``). Any model that keeps
    the stem, the pooling and the classifier computes at least this."""
    floor = copy.deepcopy(original)
    for name in SEARCHED:
        setattr(floor.features, name, nn.Identity())
    width = floor.features.conv1.conv.out_channels
    fc = nn.Linear(width, original.fc.out_features)
    fc.weight.data, fc.bias.data = original.fc.weight.data[:, :width].clone(), original.fc.bias.data.clone()
    floor.fc = fc
    return floor.eval()


def fastest_mix(original: nn.Module, target: str, batch: int, calib: List[torch.Tensor]) -> Any:
    """The search's fastest mix on ``target`` at ``batch`` (the request out of reach on purpose)."""
    return leanconv.convert(original, to="auto", target=target, target_speedup=FAR, accept_slower=True,
                            input_size=(batch, 1, 32, 32), calib=calib)


def measure(original: nn.Module, data: Any, batch: int, targets: Sequence[str], rounds: int,
            min_run_time: float) -> Dict[str, Any]:
    """One batch size: the original, the floor and each target's fastest mix, timed interleaved."""
    calib = calibration_batches(data.train, 64)
    models = {"original": original, "floor": floor_model(original)}
    searches = {}
    for target in targets:
        result = fastest_mix(original, target, batch, calib)
        models[f"fastest mix ({target})"] = result.model.eval()
        searches[target] = {"headline": result.search.headline(), "mix": result.search.final.mix_text(),
                            "speedup_in_search": result.search.fastest_speedup}
    report = measure_targets(models, (batch, 1, 32, 32), targets=list(targets), calib=calib, rounds=rounds,
                             min_run_time=min_run_time, val=data.test, eager=False)
    best = {label: report.best(label) for label in models}
    return {"batch": batch, "goal": GOALS.get(batch),
            "best": {label: {"target": row.target, "precision": row.ran or row.precision, "ms": row.latency.median,
                             "ms_low": row.latency.low, "ms_high": row.latency.high} for label, row in best.items()},
            "bound": _spread(report.speedup("original", "floor")),
            "reached": {label: _spread(report.speedup("original", label)) for label in models
                        if label.startswith("fastest mix")},
            "searches": searches, "report": report.to_markdown()}


def _spread(spread: Any) -> Dict[str, float]:
    return {"median": spread.median, "low": spread.low, "high": spread.high}


def markdown(meta: Dict[str, Any], runs: List[Dict[str, Any]]) -> List[str]:
    lines = ["# How fast the demo's converted model could be", "",
             f"{meta['date']}, torch {meta['torch']}, {meta['cpu_count']} CPUs, 1 thread, {meta['rounds']} interleaved "
             f"rounds; load average {meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} at the "
             f"end. Written by `{meta['command']}`.", "",
             "Speedups are the original at its best (onnxruntime or openvino, any precision) over the model at "
             "its best, per round: median (min-max). The floor is the original without `features.conv2..4` (the stem, the "
             "pooling and a classifier: its accuracy means nothing): no conversion that keeps those is faster, so "
             "original / floor bounds every speedup.", "",
             "| batch | goal | original at its best | floor at its best | bound (original / floor) | "
             "fastest mix found | reached |", "|---:|---:|---|---|---:|---|---:|"]
    for run in runs:
        original, floor = run["best"]["original"], run["best"]["floor"]
        bound = run["bound"]
        for label, reached in run["reached"].items():
            mix = run["best"][label]
            lines.append(f"| {run['batch']} | {run['goal']:g}x | {original['ms']:.3f} ms ({original['target']} "
                         f"{original['precision']}) | {floor['ms']:.3f} ms ({floor['target']} {floor['precision']}) | "
                         f"{bound['median']:.2f}x ({bound['low']:.2f}-{bound['high']:.2f}) | {label}: "
                         f"{mix['ms']:.3f} ms ({mix['target']} {mix['precision']}) | {reached['median']:.2f}x "
                         f"({reached['low']:.2f}-{reached['high']:.2f}) |")
    for run in runs:
        lines += ["", f"## Batch {run['batch']}", ""]
        lines += [f"- search on {target}: {s['mix']}; {s['headline']}" for target, s in run["searches"].items()]
        lines += ["", run["report"]]
    return lines


def _command(argv: Any) -> str:
    """The command line that wrote the results, with the cache folder when one was set."""
    cache = os.environ.get("LEANCONV_CACHE_DIR")
    line = "python benchmarks/demo_reach.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return f"LEANCONV_CACHE_DIR={cache} {line}" if cache else line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    files = [out / "demo_reach.json", out / "demo_reach.md"]
    if any(p.exists() for p in files) and not args.force:
        print(f"refusing to overwrite {out}/demo_reach.*: pass --force", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rounds, min_run_time = (1, 0.05) if args.quick else (args.rounds, 0.3)
    plan = [(1, ["onnxruntime"])] if args.quick else [(1, ["onnxruntime", "openvino"]), (16, ["onnxruntime", "openvino"])]
    load_start = list(os.getloadavg())
    original, data = trained_digits_cnn(progress=False).eval(), load_data("digits")
    runs = [measure(original, data, batch, targets, rounds, min_run_time) for batch, targets in plan]
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "rounds": rounds, "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()), "quick": args.quick, "demo_request": TARGET_SPEEDUP,
            "command": _command(argv)}
    lines = markdown(meta, runs)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(files[0], json.dumps({"meta": meta, "runs": runs}, indent=2, default=str))
    write_atomic(files[1], "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
