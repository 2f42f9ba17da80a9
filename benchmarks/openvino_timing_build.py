"""The OpenVINO int8 build for timing: NNCF against FakeQuantize inserted where NNCF puts it.

``convert(to='auto', target='openvino', precision='int8')`` times every candidate layer alone,
built by ``OpenVinoTarget.build_for_timing``. For each candidate of the search
(``layer_candidates`` + ``fit_candidate`` on a 3x3 conv, bias-free as in ResNet-18, batch 1)
this builds it twice from the same converted model and calibration batches (the timed input and
two seeded random ones, as ``deployed_layer`` does): int8 by NNCF (``quantize`` with its pattern
graph reused: the old timing build) and int8 by ``quick_int8`` (the new one), each compiled as
the target compiles. Per row: the build seconds of each (convert + quantize + compile), whether
the CPU plugin compiled the same program (``runtime_program``: every runtime node's type,
precisions, layout and kernel), and the ms of the two, timed interleaved in one process
(``time_interleaved``: rounds alternate, median and range over rounds), 1 thread. Whole models
(ResNet-18 at 224, the digits CNN at 16x1x32x32) go through ``deployed_layer``: their build
seconds and which quantization the note names.

    python benchmarks/openvino_timing_build.py [--out benchmarks/results] [--force] [--quick]

``--quick``: one shape (16@8) and short timings (a smoke run; its numbers say nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

import leanconv.kinds  # noqa: F401 - registers the conv kinds
from leanconv._files import write_atomic
from leanconv.conversion.candidates import fit_candidate, layer_candidates
from leanconv.conversion.latency import CALIBRATION_BATCHES, TimingSetting, deployed_layer
from leanconv.deploy import on_openvino as ovm
from leanconv.deploy.ov_fake_quant import quick_int8
from leanconv.deploy.target import cpu_name
from leanconv.timing import time_interleaved

SHAPES = [(64, 56, 1), (128, 28, 1), (256, 14, 2), (512, 7, 1)]
"""(channels, input size, stride) of the 3x3 convs whose candidates are built: ResNet-18's stages."""
GOAL_S = 0.1  # one candidate's int8 build for timing


def calibration(x: torch.Tensor) -> List[torch.Tensor]:
    """The batches ``deployed_layer`` calibrates int8 timings on: ``x`` and seeded random ones."""
    generator = torch.Generator().manual_seed(0)
    return [x] + [torch.randn(tuple(x.shape), generator=generator) for _ in range(CALIBRATION_BATCHES)]


def build(module: nn.Module, x: torch.Tensor, quick: bool) -> Tuple[Any, float]:
    """``module`` built for timing in int8 by NNCF or by ``quick_int8``, compiled, and the seconds it took."""
    start = time.perf_counter()
    ov_model, _ = ovm.convert_for_timing(module, x)
    batches = calibration(x)
    if quick:
        ov_model = quick_int8(ov_model, batches)
        if ov_model is None:
            raise RuntimeError("quick_int8 declined a candidate layer")
    else:
        with ovm._reused_patterns():
            ov_model = ovm.quantize(ov_model, batches)
    compiled = ovm.compile_model(ov_model, tuple(x.shape), "int8", 1)
    return compiled, time.perf_counter() - start


def compare(label: str, module: nn.Module, x: torch.Tensor, rounds: int, min_run_time: float) -> Dict[str, Any]:
    """One row: build seconds, same program, and interleaved ms of NNCF's and the quick build."""
    nncf, nncf_s = build(module, x, quick=False)
    quick, quick_s = build(module, x, quick=True)
    calls: List[Callable[[], Any]] = [lambda run=ovm._runner(c, tuple(x.shape)): run(x) for c in (nncf, quick)]
    timed = time_interleaved(calls, rounds=rounds, warmup=3, min_run_time=min_run_time, num_threads=1)
    spreads = [timed.spread(0), timed.spread(1)]
    ratio = timed.ratio(1, 0)
    return {"candidate": label, "nncf_build_s": nncf_s, "quick_build_s": quick_s,
            "same_program": ovm.runtime_program(nncf) == ovm.runtime_program(quick),
            "ran": ovm.describe_ran(ovm.layer_precisions(quick), "none"),
            "nncf_ms": [spreads[0].median, spreads[0].low, spreads[0].high],
            "quick_ms": [spreads[1].median, spreads[1].low, spreads[1].high],
            "quick_over_nncf": [ratio.median, ratio.low, ratio.high]}


def candidate_rows(shapes: List[Tuple[int, int, int]], rounds: int, min_run_time: float) -> List[Dict[str, Any]]:
    rows = []
    for channels, size, stride in shapes:
        conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        x = torch.randn(1, channels, size, size)
        for candidate in layer_candidates(conv, (size, size)):
            module = fit_candidate(conv, candidate, None)[0].eval()
            row = compare(candidate.label, module, x, rounds, min_run_time)
            row["shape"] = f"{channels}@{size}" + (f" s{stride}" if stride > 1 else "")
            rows.append(row)
            print(f"{row['shape']} {row['candidate']}: build {row['nncf_build_s']:.3f} -> {row['quick_build_s']:.3f} s,"
                  f" same program {row['same_program']}, ms {row['nncf_ms'][0]:.3f} vs {row['quick_ms'][0]:.3f}",
                  file=sys.stderr, flush=True)
    return rows


def whole_model_rows(quick: bool) -> List[Dict[str, Any]]:
    """Whole models through ``deployed_layer``: how long the timing build takes and what it used."""
    from leanconv.models.digits import digits_cnn
    from leanconv.models.resnet import resnet18

    cases = [("digits CNN", digits_cnn(), (16, 1, 32, 32))]
    if not quick:
        cases.append(("ResNet-18", resnet18(), (1, 3, 224, 224)))
    rows = []
    for name, model, shape in cases:
        start = time.perf_counter()
        deployed = deployed_layer(TimingSetting("openvino", "int8"), model.eval(), torch.randn(shape))
        rows.append({"model": name, "input": list(shape), "build_s": time.perf_counter() - start,
                     "ran": deployed.ran, "note": deployed.note})
    return rows


def spread_text(values: List[float], digits: int = 3) -> str:
    median, low, high = values
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def summary(rows: List[Dict[str, Any]]) -> str:
    """Programs alike, build seconds of both, and how far the quick build's ms are from NNCF's."""
    builds = sorted(row["quick_build_s"] for row in rows)
    ratios = sorted(row["quick_over_nncf"][0] for row in rows)
    within = sum(abs(ratio - 1) <= 0.05 for ratio in ratios)
    return (f"{len(rows)} candidates; the same runtime program in {sum(r['same_program'] for r in rows)} of "
            f"{len(rows)}. Build seconds, NNCF: total {sum(r['nncf_build_s'] for r in rows):.1f}, median "
            f"{sorted(r['nncf_build_s'] for r in rows)[len(rows) // 2]:.3f}; quick: total {sum(builds):.1f}, median "
            f"{builds[len(builds) // 2]:.3f}, max {builds[-1]:.3f} (goal {GOAL_S} per candidate). Quick ms over "
            f"NNCF ms (per-round ratio, median): {ratios[0]:.2f} to {ratios[-1]:.2f}, median "
            f"{ratios[len(ratios) // 2]:.2f}; within 5% in {within} of {len(rows)}.")


def markdown(data: Dict[str, Any]) -> str:
    lines = ["# OpenVINO int8 build for timing: NNCF vs FakeQuantize inserted", "",
             f"{data['cpu']}, {data['threads']} thread, load average {data['load_average']} at the start, openvino "
             f"{data['openvino']}, nncf {data['nncf']}, {data['rounds']} interleaved rounds of "
             f"{data['min_run_time']} s; ms are median (min-max over rounds).", "", summary(data["candidates"]), "",
             "| shape | candidate | build s NNCF | build s quick | same program | ran | ms NNCF | ms quick "
             "| quick/NNCF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in data["candidates"]:
        lines.append(f"| {row['shape']} | {row['candidate']} | {row['nncf_build_s']:.3f} | "
                     f"{row['quick_build_s']:.3f} | {'yes' if row['same_program'] else 'NO'} | {row['ran']} | "
                     f"{spread_text(row['nncf_ms'])} | {spread_text(row['quick_ms'])} | "
                     f"{spread_text(row['quick_over_nncf'], 2)} |")
    lines += ["", "Whole models (`deployed_layer`, int8 for timing: NNCF, not the quick insertion):", "",
              "| model | input | build s | ran | note |", "|---|---|---|---|---|"]
    for row in data["whole_models"]:
        lines.append(f"| {row['model']} | {tuple(row['input'])} | {row['build_s']:.2f} | {row['ran']} | "
                     f"{row['note']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--force", action="store_true", help="replace existing results")
    parser.add_argument("--quick", action="store_true", help="one small shape, short timings (a smoke run)")
    args = parser.parse_args()
    target = args.out / "openvino_timing_build.json"
    if target.exists() and not args.force:
        sys.exit(f"{target} exists: pass --force to replace it")
    torch.manual_seed(0)
    shapes, rounds, min_run_time = ([(16, 8, 1)], 2, 0.01) if args.quick else (SHAPES, 7, 0.1)
    data: Dict[str, Any] = {"cpu": cpu_name(), "threads": 1, "python": platform.python_version(),
                            "torch": torch.__version__, "openvino": _version("openvino"),
                            "nncf": _version("nncf"), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "quick": args.quick, "rounds": rounds, "min_run_time": min_run_time,
                            "load_average": round(os.getloadavg()[0], 2)}
    data["candidates"] = candidate_rows(shapes, rounds, min_run_time)
    data["whole_models"] = whole_model_rows(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(data, indent=1))
    write_atomic(target.with_suffix(".md"), markdown(data))
    print(markdown(data))


def _version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


if __name__ == "__main__":
    main()
