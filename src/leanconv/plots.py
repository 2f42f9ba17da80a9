"""Figures people would rather see than read: the candidates an optimization tried, and what
each converted layer became and gained. Needs the ``plot`` extra (matplotlib); figures are
drawn without a display (no pyplot state) and saved as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'leanconv[plot]'") from error
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_candidates(result: Any, path: Union[str, Path]) -> None:
    """Accuracy against MACs and against measured batch-1 latency for every candidate tried
    (after the refit), the original, and the chosen one after distillation."""
    figure = _figure(10, 4.2)
    axes = figure.subplots(1, 2, sharey=True)
    original, chosen = result.original, result.chosen
    final = result.converted
    for ax, x_of, label in ((axes[0], lambda s: s.macs / 1e6, "MACs (millions, batch 1)"),
                            (axes[1], lambda s: s.latency_ms, "latency, batch 1 (ms, fastest deployment setting)")):
        xs = [x_of(c) for c in result.candidates]
        ax.scatter(xs, [100 * c.accuracy for c in result.candidates], color="tab:blue", label="candidates (refit)")
        for c, x in zip(result.candidates, xs):
            ax.annotate(c.label, (x, 100 * c.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.scatter([x_of(original)], [100 * original.accuracy], marker="*", s=160, color="black", label="original")
        ax.scatter([x_of(final)], [100 * final.accuracy], marker="D", s=60, color="tab:green",
                   label=f"chosen after distillation ({chosen.label})")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle("Candidates tried: accuracy vs cost")
    figure.savefig(Path(path))


def plot_layers(result: Any, path: Union[str, Path]) -> None:
    """Per converted layer of the chosen candidate: its rank, and its measured speedup over the
    dense conv it replaced (timed alone, batch 1)."""
    layers = list(result.chosen.plan.layers.items())
    figure = _figure(max(6.0, 0.9 * len(layers) + 3), 4.2)
    axes = figure.subplots(1, 2)
    names = [p for p, _ in layers]
    ranks = [_rank(entry.options) for _, entry in layers]
    axes[0].bar(range(len(names)), ranks, color="tab:blue")
    axes[0].set_ylabel("rank (depth multiplier / mid channels / r)")
    speedups = [result.layer_latency[p][0] / result.layer_latency[p][1] if p in result.layer_latency else 0.0
                for p in names]
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    axes[1].bar(range(len(names)), speedups, color=colors)
    axes[1].axhline(1.0, color="black", linewidth=0.8)
    axes[1].set_ylabel("measured speedup vs dense (x)")
    for ax in axes:
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Per layer: {result.chosen.label}")
    figure.savefig(Path(path))


def _rank(options: dict) -> float:
    for key in ("depth_multiplier", "mid_channels", "groups"):
        if key in options:
            return float(options[key])
    if "ranks" in options:
        return float(min(options["ranks"]))
    return 0.0


__all__ = ["plot_candidates", "plot_layers"]


def plot_front(search: Any, path: Union[str, Path]) -> None:
    """``convert(to='auto')``'s search: the whole-model front of the per-layer mix (output error
    against latency predicted from per-layer timings on the target) beside each kind alone,
    the budget, and every whole model measured by the correction loop."""
    figure = _figure(7.5, 4.6)
    ax = figure.subplots()
    for name, curve in sorted(search.fronts.items(), key=lambda item: item[0] != "mix"):
        ms = [point[0] for point in curve]
        error = [point[1] ** 0.5 for point in curve]
        mix = name == "mix"
        ax.step(ms, error, where="post", linewidth=2.4 if mix else 1.2, color="black" if mix else None,
                label="per-layer mix" if mix else f"{name} alone", zorder=3 if mix else 2)
    ax.axvline(search.budget_ms, color="tab:red", linestyle="--", linewidth=1, label=f"budget ({search.request})")
    for index, attempt in enumerate(search.attempts, 1):
        error = attempt.damage ** 0.5
        ax.annotate("", (attempt.measured_ms, error), (attempt.predicted_ms, error), arrowprops={"arrowstyle": "->"})
        ax.scatter([attempt.measured_ms], [error], marker="o", color="tab:green", zorder=4,
                   label="whole model measured (arrow: from predicted)" if index == 1 else None)
        ax.annotate(str(index), (attempt.measured_ms, error), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"latency (ms) on {search.target} {search.precision}, input {tuple(search.input_size)}")
    ax.set_ylabel("combined layer output error (root of summed squares)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.suptitle("Per-layer choice: output error vs latency on the target")
    figure.savefig(Path(path))
