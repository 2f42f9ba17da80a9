"""Time to convert ResNet-50: every conversion target by rank, energy and MAC budget, and a
rank-1 depthwise separable conversion with a 256-image calibration refit.

Each ``leanconv.convert`` call runs once (this is not a micro-benchmark: one call takes seconds),
on random weights (no download), in one process, with the thread count, CPU and load average
recorded. Rows: for each kind of ``leanconv.kinds.convertible_kinds()`` the default rank,
``energy=0.5``, ``mac_budget`` = half the model's MACs, and ``mac_budget`` = the model's MACs
less half of the convertible layers' (a budget every kind can meet; ResNet-50's 1x1 convs alone
hold more than half its MACs). A request a kind refuses is listed with its one-line reason and
the time it took to say so. The refit row converts to rank-1 dsconv with ``calib`` = 256 random
images at 64x64 in 4 batches of 64 (the refit holds out the last quarter).

    python benchmarks/convert_speed.py [--out benchmarks/results] [--force] [--quick] [--threads N]

``--quick``: the digits CNN (1 input channel) at 32x32 and 32 calibration images (a smoke run in
seconds; its numbers say nothing about the goal).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import leanconv
from leanconv import models
from leanconv._files import write_atomic
from leanconv.kinds import convertible_kinds

GOAL_S = 5.0  # every target kind by rank, energy or MAC budget, on 2 cores (issue 12)
REFIT_GOAL_S = 60.0  # the same with a 256-image calibration refit


def cpu_name() -> str:
    """The CPU's model name (one definition: leanconv.deploy.target.cpu_name)."""
    from leanconv.deploy.target import cpu_name as name

    return name()


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def every_conv() -> Dict[str, Any]:
    """Arguments that make convert consider every conv of the model, the stem too."""
    return {"keep_stem": False} if "keep_stem" in inspect.signature(leanconv.convert).parameters else {}


def timed_convert(model: torch.nn.Module, kind: str, mode: str, **kwargs: Any) -> Dict[str, Any]:
    """One conversion, timed; a refusal is a row with its reason."""
    kwargs.update(every_conv())
    row: Dict[str, Any] = {"kind": kind, "mode": mode, "load_before": load_average()}
    start, cpu = time.perf_counter(), time.process_time()
    try:
        result = leanconv.convert(model, to=kind, **kwargs)
    except ValueError as error:
        row.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu, refused=str(error))
        return row
    row.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
    row.update(converted=sum(r.converted for r in result.layers), layers=len(result.layers),
               mac_ratio=result.macs_after / max(result.macs_before, 1))
    refits = [r for r in result.layers if r.output_error is not None]
    if refits:
        row["output_error_after_refit_mean"] = sum(r.output_error for r in refits) / len(refits)
    return row


def run(quick: bool) -> Dict[str, Any]:
    torch.manual_seed(0)
    name, size, channels = ("digits_cnn", 32, 1) if quick else ("resnet50", 224, 3)
    model = getattr(models, name)().eval()
    shape = (1, channels, size, size)
    total = leanconv.profile(model, shape).total_macs
    convertible = leanconv.convert(model, to="dsconv", rank=1, input_size=shape, **every_conv()).macs_before
    modes = {"rank (default)": {}, "energy=0.5": {"energy": 0.5},
             "mac_budget=0.5 model": {"mac_budget": int(0.5 * total)},
             "mac_budget=model-0.5 convertible": {"mac_budget": int(total - 0.5 * convertible)}}
    rows: List[Dict[str, Any]] = []
    for kind in convertible_kinds():
        for mode, kwargs in modes.items():
            rows.append(timed_convert(model, kind, mode, input_size=shape, **kwargs))
            print(f"{kind:11s} {mode:34s} {rows[-1]['seconds']:8.2f} s", file=sys.stderr, flush=True)
    images, calib_size, batch = (32, 32, 8) if quick else (256, 64, 64)
    calib = list(torch.randn(images, channels, calib_size, calib_size).split(batch))
    refit_row = timed_convert(model, "dsconv", f"rank=1 + refit on {images} images {calib_size}x{calib_size}",
                              rank=1, input_size=shape, calib=calib)
    print(f"refit {refit_row['seconds']:.2f} s", file=sys.stderr)
    meta = {"model": name, "input_size": list(shape), "model_macs": total, "convertible_macs": convertible,
            "threads": torch.get_num_threads(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "calibration": {"images": images, "size": calib_size, "batch": batch},
            "goal_s": GOAL_S, "refit_goal_s": REFIT_GOAL_S, "weights": "random (torch.manual_seed(0))"}
    return {"meta": meta, "rows": rows, "refit": refit_row}


def markdown(data: Dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [f"# Conversion time: {meta['model']} at {meta['input_size'][2]}x{meta['input_size'][3]}", "",
             f"{meta['threads']} threads on {meta['cpu']} ({meta['cores']} logical CPUs), torch {meta['torch']}, "
             f"{meta['date']}; random weights; one run per row. Load average (1 min) before each row is shown: "
             "on a shared machine it says how many other processes competed for the cores; CPU seconds "
             "(this process, all its threads) are less sensitive to that than wall seconds.", "",
             f"Goal: every row under {meta['goal_s']:.0f} s on 2 cores; the refit row under "
             f"{meta['refit_goal_s']:.0f} s.", "",
             "| kind | request | seconds | CPU seconds | converted / layers | MAC ratio (convertible) | load | note |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in [*data["rows"], data["refit"]]:
        done = f"{row['converted']} / {row['layers']}" if "converted" in row else "-"
        ratio = f"{row['mac_ratio']:.3f}" if "mac_ratio" in row else "-"
        note = row.get("refused", "")
        if "output_error_after_refit_mean" in row:
            note = f"mean relative output error after refit {row['output_error_after_refit_mean']:.3f}"
        lines.append(f"| {row['kind']} | {row['mode']} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} | {done} | {ratio} | "
                     f"{row['load_before']} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    targets = [out / "convert_speed.json", out / "convert_speed.md"]
    if any(p.exists() for p in targets) and not args.force:
        print(f"refusing to overwrite {out}/convert_speed.*: pass --force", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = run(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(targets[0], json.dumps(data, indent=2))
    write_atomic(targets[1], markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
