"""Overflow and precision hazards of a quantized model, per layer, before code generation.

For each integer layer: the accumulator width the worst-case input needs (from the weights and
the input range) and the width the calibration data reached, accumulator overflows, the
factor's precision (significant bits of the ``ap_fixed<32,1>`` raw value, or TFLite's shift
range), biases clipped to their width, and outputs that saturated (or wrapped) on the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Union

import torch

from leanconv.quant.layers import acc_bits_needed
from leanconv.quant.model import QuantizedModel
from leanconv.quant.requant import ApFixedRequant


@dataclass
class LayerHazard:
    """One layer's hazards; ``warnings`` says which of them matter."""

    layer: str
    kind: str
    acc_bits: int
    acc_bits_worst: int
    acc_bits_seen: int
    acc_overflow: int
    factor_bits_min: int
    factor_error_bound: float
    shift_range: str
    bias_clipped: int
    saturated: int
    outputs: int
    store: str

    @property
    def warnings(self) -> List[str]:
        notes = []
        if self.acc_bits_worst > self.acc_bits:
            notes.append(f"{self.layer}: a worst-case input needs a {self.acc_bits_worst}-bit accumulator "
                         f"(ap_int<{self.acc_bits}> may overflow and wrap)")
        if self.acc_overflow:
            notes.append(f"{self.layer}: {self.acc_overflow} accumulator overflows on the calibration data")
        if self.bias_clipped:
            notes.append(f"{self.layer}: {self.bias_clipped} biases clipped to their integer width")
        if self.saturated:
            verb = "saturated" if self.store == "saturate" else "WRAPPED (store='wrap')"
            notes.append(f"{self.layer}: {self.saturated} of {self.outputs} outputs {verb} on the 8-bit store")
        return notes


@dataclass
class HazardReport:
    """Per-layer hazards of a quantized model on some data (calibration or golden inputs)."""

    rows: List[LayerHazard]
    samples: int
    dialect: str
    notes: List[str] = field(default_factory=list)

    @property
    def warnings(self) -> List[str]:
        return [w for row in self.rows for w in row.warnings]

    def to_markdown(self) -> str:
        lines = [
            f"Hazards ({self.dialect} dialect) on {self.samples} samples.",
            "",
            "| layer | kind | acc bits: have / worst case / seen | acc overflows | factor bits (min) "
            "| factor rel. error <= | shifts | biases clipped | saturated on store |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            share = f"{r.saturated:,} / {r.outputs:,} ({r.saturated / max(r.outputs, 1):.2%})"
            lines.append(
                f"| `{r.layer}` | {r.kind} | {r.acc_bits} / {r.acc_bits_worst} / {r.acc_bits_seen} | {r.acc_overflow} "
                f"| {r.factor_bits_min} | {r.factor_error_bound:.2e} | {r.shift_range} | {r.bias_clipped} | {share} |"
            )
        warnings = self.warnings
        lines += ["", "Warnings:" if warnings else "No hazard: no overflow, no clipped bias, no saturation."]
        lines += [f"- {w}" for w in warnings]
        return "\n".join(lines + self.notes) + "\n"


@torch.no_grad()
def hazard_report(qmodel: QuantizedModel, data: Union[torch.Tensor, Iterable[torch.Tensor]]) -> HazardReport:
    """Run ``qmodel`` on ``data`` (float batches, or integer codes) and collect each layer's hazards."""
    batches = [data] if isinstance(data, torch.Tensor) else list(data)
    stats = [dict() for _ in qmodel.layers]
    samples = 0
    for batch in batches:
        codes = qmodel.quantize_input(batch) if batch.is_floating_point() else batch
        qmodel.forward_all(codes, stats)
        samples += batch.shape[0]
    rows = []
    for layer, seen in zip(qmodel.layers, stats):
        requant = layer.requant
        if isinstance(requant, ApFixedRequant):
            bits = int(min(int(f).bit_length() for f in requant.factor))
            bound, shifts, store = 2.0 ** (1 - bits), "-", requant.settings.store
            acc_bits = requant.settings.acc_bits
        else:
            bits, bound, store, acc_bits = 31, 2.0 ** -31, "saturate", 32
            shifts = f"{int(requant.shift.min())} .. {int(requant.shift.max())}"
        rows.append(LayerHazard(
            layer.name, layer.kind, acc_bits, acc_bits_needed(layer.worst_case_acc()),
            acc_bits_needed(seen.get("acc_max_abs", 0)), seen.get("acc_overflow", 0), bits, bound, shifts,
            requant.bias_clipped, seen.get("saturated", 0), seen.get("outputs", 0), store,
        ))
    return HazardReport(rows, samples, qmodel.dialect.name)


__all__ = ["HazardReport", "LayerHazard", "hazard_report"]
