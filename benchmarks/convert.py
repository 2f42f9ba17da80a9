"""Conversion quality vs MACs: digits CNN accuracy and ResNet-18 output error, with and without refit.

Digits: the digits CNN is trained here (seeded, about 10 s), then converted to dsconv,
asymmetric and tucker2 under several global MAC budgets, each without calibration data and
with 256 calibration images (which choose the ranks by each layer's output error and refit
each layer); test accuracy is measured. ResNet-18 (random weights, 64x64 inputs):
relative logit error vs MACs at a few fixed ranks, with and without refit on 128 random
inputs. Writes ``convert.json``, ``convert.md`` and ``convert.png`` under ``--out``.

    python benchmarks/convert.py [--out benchmarks/results] [--force] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

import leanconv
from leanconv._files import write_atomic
from leanconv.data import load_digits
from leanconv.models.digits import train_digits_cnn

TARGETS = ("dsconv", "asymmetric", "tucker2")


@torch.no_grad()
def accuracy(model, data) -> float:
    return (model.eval()(data.test_x).argmax(1) == data.test_y).float().mean().item()


def digits_rows(budgets: List[float]) -> List[Dict]:
    data = load_digits()
    model = train_digits_cnn(data, epochs=8)
    shape = (1, 1, 32, 32)
    total = leanconv.profile(model, shape).total_macs
    calib = list(data.train_x[:256].split(64))
    rows = [dict(model="digits_cnn", target="original", refit=False, budget=1.0, macs=total, mac_ratio=1.0,
                 metric="accuracy", value=accuracy(model, data), seconds=0.0)]
    for target in TARGETS:
        for budget in budgets:
            for use_refit in (False, True):
                start = time.perf_counter()
                result = leanconv.convert(model, to=target, mac_budget=int(total * budget), input_size=shape,
                                          calib=calib if use_refit else None)
                seconds = time.perf_counter() - start
                macs = leanconv.profile(result.model, shape).total_macs
                rows.append(dict(model="digits_cnn", target=target, refit=use_refit, budget=budget, macs=macs,
                                 mac_ratio=macs / total, metric="accuracy", value=accuracy(result.model, data),
                                 seconds=seconds))
                print(rows[-1], file=sys.stderr)
    return rows


@torch.no_grad()
def resnet_rows(quick: bool) -> List[Dict]:
    torch.manual_seed(0)
    model = leanconv.models.create("resnet18").eval()
    shape = (1, 3, 64, 64)
    total = leanconv.profile(model, shape).total_macs
    calib = list(torch.randn(64 if quick else 128, 3, 64, 64).split(32))
    probe = torch.randn(32, 3, 64, 64)
    reference = model(probe)
    settings = {"dsconv": [1, 2, 4], "asymmetric": [16, 64], "tucker2": [16, 64]}
    if quick:
        settings = {"dsconv": [1], "asymmetric": [16], "tucker2": [16]}
    rows = []
    for target, ranks in settings.items():
        for rank in ranks:
            for use_refit in (False, True):
                start = time.perf_counter()
                with torch.enable_grad():
                    result = leanconv.convert(model, to=target, rank=rank, input_size=shape,
                                              calib=calib if use_refit else None)
                seconds = time.perf_counter() - start
                error = float((result.model.eval()(probe) - reference).norm() / reference.norm())
                macs = leanconv.profile(result.model, shape).total_macs
                rows.append(dict(model="resnet18", target=target, refit=use_refit, budget=rank, macs=macs,
                                 mac_ratio=macs / total, metric="relative logit error", value=error, seconds=seconds))
                print(rows[-1], file=sys.stderr)
    return rows


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, model, ylabel in ((axes[0], "digits_cnn", "test accuracy"), (axes[1], "resnet18", "relative logit error")):
        for target, color in zip(TARGETS, ("tab:blue", "tab:orange", "tab:green")):
            for use_refit, style in ((False, "--"), (True, "-")):
                pts = sorted((r["mac_ratio"], r["value"]) for r in rows
                             if r["model"] == model and r["target"] == target and r["refit"] == use_refit)
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=color,
                            label=f"{target}{' + refit' if use_refit else ''}")
        original = [r for r in rows if r["model"] == model and r["target"] == "original"]
        if original:
            ax.axhline(original[0]["value"], color="gray", lw=1, label="original")
        ax.set_xlabel("MACs / original MACs")
        ax.set_ylabel(ylabel)
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer settings (a smoke run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    targets = [out / "convert.json", out / "convert.md", out / "convert.png"]
    if any(p.exists() for p in targets) and not args.force:
        print(f"refusing to overwrite {out}/convert.*: pass --force", file=sys.stderr)
        return 2
    rows = digits_rows([0.3] if args.quick else [0.2, 0.3, 0.5, 0.7]) + resnet_rows(args.quick)
    lines = ["# Conversion quality vs MACs", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads. Digits: MAC budget as a share of the "
             "original; ResNet-18: fixed rank (random weights, 64x64).", "",
             "| model | target | refit | budget / rank | MACs | MAC ratio | metric | value | convert s |",
             "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']} | {'yes' if r['refit'] else 'no'} | {r['budget']} | "
                     f"{r['macs']:,} | {r['mac_ratio']:.3f} | {r['metric']} | {r['value']:.4f} | {r['seconds']:.2f} |")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(targets[0], json.dumps(rows, indent=2))
    write_atomic(targets[1], "\n".join(lines) + "\n")
    plot(rows, targets[2])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
