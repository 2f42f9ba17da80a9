"""What a conversion returns: the converted model, its plan and a report per layer.

:class:`ConversionResult` is what :func:`leanconv.convert` returns for every kind and for
``to='auto'`` (then with the search's report, :attr:`ConversionResult.search`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from torch import nn

from leanconv.conversion.plan import Plan


NO_REFIT = ("no refit: without calib the converted layers were not fitted to any data, and a low-rank "
            "conversion can fall close to chance accuracy (the digits CNN at rank 1 does; with a refit on 256 "
            "images most of its accuracy comes back: benchmarks/results/deploy.md). Pass calib=... (--calib) to refit.")


@dataclass
class LayerReport:
    """What happened to one conv."""

    path: str
    converted: bool
    kind: str
    options: Dict[str, Any]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    relative_weight_error: float
    reason: str = ""
    output_error: Optional[float] = None  # relative, on the calibration data fitted, with the weights kept
    output_error_before_refit: Optional[float] = None
    held_out_error_before_refit: Optional[float] = None  # on the held-out calibration images
    held_out_error_after_refit: Optional[float] = None
    refit_kept: Optional[bool] = None  # False: the refit raised the held-out error and was undone
    latency_before_ms: Optional[float] = None  # measured, under a latency budget
    latency_after_ms: Optional[float] = None


@dataclass
class ConversionResult:
    """The converted model, the plan that rebuilds its architecture, and a per-layer report."""

    model: nn.Module
    plan: Plan
    layers: List[LayerReport] = field(default_factory=list)
    original_latency_ms: Optional[float] = None  # measured whole model, under a latency budget
    predicted_latency_ms: Optional[float] = None  # the rest of the model + the chosen layers' timings
    kept: Dict[str, str] = field(default_factory=dict)  # path -> why a conv that is not a target stays
    convertible_share: Optional[float] = None  # of the whole model's MACs at input_size, in eligible convs
    search: Optional[Any] = None  # to='auto': the SearchReport (what was measured, chosen and reached)

    @property
    def refitted(self) -> bool:
        """Whether the converted layers were refit on calibration data (``calib``)."""
        return any(r.output_error is not None for r in self.layers)

    @property
    def macs_before(self) -> int:
        return sum(r.macs_before for r in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(r.macs_after if r.converted else r.macs_before for r in self.layers)

    def to_markdown(self) -> str:
        lines = [f"**{self.search.headline()}**\n"] if self.search is not None else []
        if self.convertible_share is not None:
            lines.append(f"convertible layers hold {self.convertible_share:.1%} of the model's MACs at input_size: "
                         f"no conversion of them can remove more\n")
        lines += ["| layer | converted | kind | options | MACs before | MACs after | rel. weight error | "
                 "rel. output error (calib) | note |",
                 "|---|---|---|---|---:|---:|---:|---:|---|"]
        for r in self.layers:
            output = _errors(r)
            lines.append(f"| {r.path} | {'yes' if r.converted else 'no'} | {r.kind} | {json.dumps(r.options)} | "
                         f"{r.macs_before:,} | {r.macs_after:,} | {r.relative_weight_error:.4f} | {output} | {r.reason} |")
        unit = "" if self.convertible_share is not None else " per output pixel (no input_size)"
        lines.append(f"\nconvertible layers: {self.macs_before:,} MACs{unit} before, {self.macs_after:,} after "
                     f"({self.macs_after / max(self.macs_before, 1):.3f}x)")
        if self.kept:
            lines.append("\nleft as they are: " + "; ".join(f"{path}: {why}" for path, why in self.kept.items()))
        if self.plan.layers and not self.refitted:
            lines.append(f"\n{NO_REFIT}")
        if self.original_latency_ms is not None:
            lines += self._latency_lines()
        if self.search is not None:
            lines += ["\n## Per-layer choice on the target\n", self.search.to_markdown(headline=False)]
        return "\n".join(lines) + "\n"

    def _latency_lines(self) -> List[str]:
        lines = [f"\nmeasured latency: {self.original_latency_ms:.3f} ms before; predicted from per-layer "
                 f"timings: {self.predicted_latency_ms:.3f} ms after"]
        for r in self.layers:
            if r.latency_before_ms is not None:
                after = "-" if r.latency_after_ms is None else f"{r.latency_after_ms:.3f}"
                lines.append(f"- {r.path}: {r.latency_before_ms:.3f} ms dense -> {after} ms")
        return lines


def _errors(r: LayerReport) -> str:
    """The report's output-error cell: fitted images, then held-out ones."""
    if r.output_error is None:
        return "-"
    text = f"{r.output_error_before_refit:.3f} -> {r.output_error:.3f}"
    if r.held_out_error_before_refit is not None:
        text += f" (held out {r.held_out_error_before_refit:.3f} -> {r.held_out_error_after_refit:.3f})"
    return text


__all__ = ["NO_REFIT", "ConversionResult", "LayerReport"]
