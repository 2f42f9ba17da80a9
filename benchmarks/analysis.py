"""Time to profile ResNet-50 and MobileNetV2 at 224: leanconv.profile vs FlopCounterMode.

Both run in this process on the meta device, alternating, median of ``--repeats`` runs each;
the ratio is leanconv time / FlopCounterMode time (below 1 means leanconv is faster). leanconv
does more per run (per-module rows, shapes, params, bytes, kinds). Counters that are installed
(ptflops) are timed too, on real CPU tensors since they need them.

    python benchmarks/analysis.py [--repeats 7] [--out benchmarks/results] [--force]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch.utils.flop_counter import FlopCounterMode

import leanconv
from leanconv import models
from leanconv._files import write_atomic


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flop_counter(model: torch.nn.Module, shape) -> int:
    with torch.device("meta"):
        x = torch.empty(shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    targets = [out / "analysis.json", out / "analysis.md"]
    if any(p.exists() for p in targets) and not args.force:
        print(f"refusing to overwrite {out}/analysis.*: pass --force", file=sys.stderr)
        return 2
    rows: List[Dict[str, object]] = []
    shape = (1, 3, 224, 224)
    for name in ("resnet50", "mobilenet_v2"):
        model = models.create(name).eval()
        with torch.device("meta"):
            meta_model = models.create(name).eval()
        lc = median_seconds(lambda: leanconv.profile(model, shape), args.repeats)
        fc = median_seconds(lambda: flop_counter(meta_model, shape), args.repeats)
        row = dict(model=name, leanconv_s=lc, flop_counter_s=fc, ratio=lc / fc,
                   macs=leanconv.profile(model, shape).total_macs, flop_counter_macs=flop_counter(meta_model, shape))
        try:
            from ptflops import get_model_complexity_info

            pt = median_seconds(lambda: get_model_complexity_info(model, shape[1:], as_strings=False,
                                                                  print_per_layer_stat=False, verbose=False), 3)
            row.update(ptflops_s=pt, ratio_vs_ptflops=lc / pt)
        except ImportError:
            pass
        rows.append(row)
        print(row)
    lines = ["# Time to profile at 224x224 (median, same process)", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats.", "",
             "| model | leanconv.profile s | FlopCounterMode s | ratio | ptflops s (CPU tensors) | MACs (both) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pt = f"{r['ptflops_s']:.3f}" if "ptflops_s" in r else "not installed"
        lines.append(f"| {r['model']} | {r['leanconv_s']:.3f} | {r['flop_counter_s']:.3f} | {r['ratio']:.2f} | {pt} | "
                     f"{r['macs']:,} |")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(targets[0], json.dumps(rows, indent=2))
    write_atomic(targets[1], "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
