"""Which distillation ``alpha`` recovers the most accuracy: the measurement behind the default.

The setting of ``leanconv demo`` (:func:`leanconv.demo.run_demo`): the digits CNN trained for
8 epochs, converted to rank-1 depthwise separable convs (the one-channel stem kept dense) with
the least-squares refit on 256 training images, then distilled from the original for 3 epochs
(Adam, batch 64, temperature 4). For each seed the teacher is trained with that seed (seed 0
is the demo's own cached teacher), the calibration images and the distillation's shuffling use
it too; each ``alpha`` then distills a copy of the same refit student, so within a seed the
alphas differ in nothing else. Test accuracy on the digits test split after distillation.

Writes ``distill_alpha.md`` and ``distill_alpha.json`` under ``--out``.

    python benchmarks/distill_alpha.py [--alphas 0.5,0.7,0.9] [--seeds 0,1,2] [--lrs 3e-3] [--force]

Each distillation takes seconds on an idle 2-core machine and minutes on a loaded one; the
wall time and load average of the run are written with the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

import leanconv
from leanconv._files import atomic_file
from leanconv.data import load_data, load_digits
from leanconv.demo import TRAIN_EPOCHS, trained_digits_cnn
from leanconv.models.digits import train_digits_cnn
from leanconv.optimization import calibration_batches, evaluate, stem_paths
from leanconv.train import distill

EPOCHS = 3
CALIB_IMAGES = 256


def teacher_for(seed: int) -> torch.nn.Module:
    """The demo's cached teacher for seed 0; a digits CNN trained the same way with ``seed`` otherwise."""
    if seed == 0:
        return trained_digits_cnn(progress=False)
    return train_digits_cnn(load_digits(), epochs=TRAIN_EPOCHS, seed=seed)


def refit_student(teacher: torch.nn.Module, data, seed: int) -> torch.nn.Module:
    """Rank-1 dsconv conversion of ``teacher`` (stem dense) refit on ``CALIB_IMAGES`` training images."""
    calib = calibration_batches(data.train, CALIB_IMAGES, seed=seed)
    input_size = data.input_size(1)
    return leanconv.convert(teacher, to="dsconv", rank=1, input_size=input_size, calib=calib,
                            exclude=stem_paths(teacher, input_size[1])).model.eval()


def measure(alphas: List[float], seeds: List[int], lrs: List[float]) -> List[Dict]:
    """One row per (seed, lr, alpha): the teacher's, the refit student's and the distilled accuracy."""
    data = load_data("digits")
    rows = []
    for seed in seeds:
        teacher = teacher_for(seed)
        student = refit_student(teacher, data, seed)
        teacher_acc, refit_acc = evaluate(teacher, data.test), evaluate(student, data.test)
        for lr in lrs:
            for alpha in alphas:
                start = time.perf_counter()
                distilled = copy.deepcopy(student)
                torch.manual_seed(seed)
                distill(distilled, teacher, data.train, epochs=EPOCHS, lr=lr, alpha=alpha, seed=seed, progress=False)
                rows.append({"seed": seed, "lr": lr, "alpha": alpha, "teacher": teacher_acc, "refit": refit_acc,
                             "distilled": evaluate(distilled, data.test), "seconds": time.perf_counter() - start})
                print(f"seed {seed} lr {lr:g} alpha {alpha:g}: {rows[-1]['distilled']:.2%}", file=sys.stderr)
    return rows


def to_markdown(rows: List[Dict], alphas: List[float], seeds: List[int], lrs: List[float], command: str,
                seconds: float) -> str:
    """Per lr: one row per alpha with the accuracy at each seed, the mean and the worst."""
    tests = len(load_data("digits").test)
    lines = ["# Distillation alpha on the digits CNN (rank-1 dsconv + refit, then distillation)", "",
             f"`{command}`; torch {torch.__version__}, {os.cpu_count()} CPUs, {EPOCHS} epochs, batch 64, "
             f"temperature 4; {seconds / 60:.1f} min in all, load average {os.getloadavg()[0]:.1f} at the end. "
             f"Test accuracy after distillation on {tests} test images (one image = {1 / tests:.2%}).", ""]
    for seed in seeds:
        first = next(r for r in rows if r["seed"] == seed)
        lines.append(f"- seed {seed}: teacher {first['teacher']:.2%}, refit student {first['refit']:.2%}")
    for lr in lrs:
        lines += ["", f"## lr {lr:g}", "", "| alpha | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | worst |",
                  "|---:|" + "---:|" * (len(seeds) + 2)]
        for alpha in alphas:
            accs = [r["distilled"] for s in seeds for r in rows if (r["seed"], r["lr"], r["alpha"]) == (s, lr, alpha)]
            lines.append(f"| {alpha:g} | " + " | ".join(f"{a:.2%}" for a in accs)
                         + f" | {statistics.mean(accs):.2%} | {min(accs):.2%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", default="0.5,0.7,0.9")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="3e-3", help="the demo's 3e-3 (distill's and optimize's default is 1e-3)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    targets = [Path(args.out) / "distill_alpha.md", Path(args.out) / "distill_alpha.json"]
    if any(p.exists() for p in targets) and not args.force:
        print(f"refusing to overwrite {args.out}/distill_alpha.*: pass --force", file=sys.stderr)
        return 2
    alphas, lrs = [float(a) for a in args.alphas.split(",")], [float(v) for v in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    rows = measure(alphas, seeds, lrs)
    command = "python benchmarks/distill_alpha.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = to_markdown(rows, alphas, seeds, lrs, command.strip(), time.perf_counter() - start)
    with atomic_file(targets[0]) as tmp:
        tmp.write_text(markdown)
    with atomic_file(targets[1]) as tmp:
        tmp.write_text(json.dumps({"torch": torch.__version__, "epochs": EPOCHS, "rows": rows}, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
