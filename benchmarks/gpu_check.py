"""Run every leanconv entry point that runs a model on one device and say which work there.

Prepared for a CUDA machine (issue 12, "Devices"): convert with a calibration refit and with a
latency budget, refit itself, profile, the deployment settings, realized efficiency, distill
and optimize, each on ``--device`` (default ``cuda``), with the model and data handed over on
the CPU the way a user would. Each check either works (its time and a one-line result) or
fails with its first error line; the table and ``gpu_check.json`` say which. Random weights
and data only (nothing is downloaded), small sizes: the whole run takes a minute or two.

    PYTHONPATH=src python benchmarks/gpu_check.py --device cuda --out $OUT
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check   # dry run of the same paths
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import leanconv
from leanconv.bench import benchmark_settings, realized_efficiency
from leanconv.conversion.refitting import refit
from leanconv.models import create
from leanconv.optimization import optimize
from leanconv.train.distillation import distill

INPUT = (16, 1, 32, 32)  # the digits CNN at batch 16


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *INPUT[1:], generator=generator), torch.randint(0, 10, (n,), generator=generator))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create("digits_cnn").eval()


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


def checks(device: str) -> Dict[str, Callable[[], str]]:
    """Each check's name and a function returning its one-line result (raises when it fails)."""
    data = _data()
    loader = DataLoader(data, batch_size=16)

    def convert_calib() -> str:
        result = leanconv.convert(_model(), rank=1, calib=loader, device=device)
        errors = [r.output_error for r in result.layers if r.output_error is not None]
        return f"on {_device_of(result.model)}; {len(errors)} layers refit, mean output error {sum(errors) / len(errors):.3f}"

    def convert_latency() -> str:
        model = _model().to(device)
        result = leanconv.convert(model, rank=None, latency_budget=1e6, input_size=INPUT)
        return f"{len(result.plan.layers)} layers converted; whole model {result.original_latency_ms:.3f} ms"

    def refit_direct() -> str:
        original = _model().to(device)
        converted = leanconv.convert(original, rank=1).model
        reports = refit(converted, original, leanconv.convert(original, rank=1).plan, loader)
        return f"{len(reports)} layers, held-out kept {sum(r.kept for r in reports)}"

    def profile() -> str:
        report = leanconv.profile(_model().to(device), INPUT, device=device)
        return f"{report.total_macs:,} MACs on {report.device}"

    def settings() -> str:
        report = benchmark_settings(_model(), INPUT, device=device, min_run_time=0.05)
        best = report.best
        return f"fastest {best.setting} {best.latency_ms:.3f} ms; {len(report.measured)} settings ran"

    def efficiency() -> str:
        original = _model()
        converted = leanconv.convert(original, rank=1, calib=loader).model
        report = realized_efficiency(original, converted, INPUT, device=device, min_run_time=0.05, rounds=2)
        return f"speedup {report.speedup:.2f}x for {report.mac_reduction:.1f}x fewer MACs"

    def distillation() -> str:
        teacher = _model()
        student = leanconv.convert(teacher, rank=1, calib=loader).model
        result = distill(student, teacher, data, epochs=1, max_steps=3, batch_size=16, device=device, progress=False)
        return f"student on {_device_of(student)}; {len(result.epochs)} epoch(s)"

    def optimization() -> str:
        result = optimize(_model(), (data, _data(32, 1)), rank=1, epochs=1, calib_images=32, sweep=False,
                          batch_sizes=(16,), min_run_time=0.05, progress=False, device=device)
        return f"accuracy {result.converted.accuracy:.3f} (random data); model on {_device_of(result.model)}"

    return {"convert(calib=...)": convert_calib, "convert(latency_budget=...)": convert_latency,
            "refit": refit_direct, "profile": profile, "benchmark_settings": settings,
            "realized_efficiency": efficiency, "distill": distillation, "optimize": optimization}


def run(device: str) -> List[Dict[str, object]]:
    rows = []
    for name, check in checks(device).items():
        start = time.perf_counter()
        try:
            result, ok = check(), True
        except Exception as error:  # the point is to record every failure, not to stop at the first
            lines = traceback.format_exception_only(type(error), error)
            result, ok = lines[-1].strip().splitlines()[0][:300], False
        rows.append({"check": name, "ok": ok, "seconds": round(time.perf_counter() - start, 2), "result": result})
        print(f"{'ok  ' if ok else 'FAIL'} {name:28s} {rows[-1]['seconds']:7.2f} s  {result}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    machine = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": args.device,
               "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(machine))
    rows = run(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"machine": machine, "checks": rows}, indent=1) + "\n")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} entry points ran on {args.device}")


if __name__ == "__main__":
    main()
