"""Accuracy of a quantized model against its float original."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from leanconv.quant.model import QuantizedModel


@dataclass
class AccuracyReport:
    """Float vs integer outputs on the same inputs.

    ``within_one_step``: share of outputs whose dequantized integer value is within one output
    quantization step (``out_scale``) of the float value; ``agreement``: share of samples whose
    top-1 class is the same; accuracies only when labels were given.
    """

    samples: int
    outputs: int
    out_scale: float
    within_one_step: float
    max_error_steps: float
    mean_error_steps: float
    agreement: Optional[float] = None
    float_accuracy: Optional[float] = None
    int_accuracy: Optional[float] = None

    def to_markdown(self) -> str:
        rows = [("samples", f"{self.samples:,}"), ("outputs compared", f"{self.outputs:,}"),
                ("output step (scale)", f"{self.out_scale:.4g}"),
                ("outputs within one step of float", f"{self.within_one_step:.2%}"),
                ("max / mean error (steps)", f"{self.max_error_steps:.2f} / {self.mean_error_steps:.3f}")]
        if self.agreement is not None:
            rows.append(("top-1 agreement with float", f"{self.agreement:.2%}"))
        if self.float_accuracy is not None:
            rows.append(("accuracy: float / integer", f"{self.float_accuracy:.2%} / {self.int_accuracy:.2%}"))
        return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


@torch.no_grad()
def accuracy_report(qmodel: QuantizedModel, model: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                    batch_size: int = 256) -> AccuracyReport:
    """Compare ``qmodel`` with the float ``model`` (run in eval mode on a copy) on inputs ``x``."""
    import copy

    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got {type(x).__name__}")
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries, x has {x.shape[0]} samples")
    reference = copy.deepcopy(model).eval()
    floats, ints = [], []
    for batch in x.split(batch_size):
        floats.append(reference(batch).double())
        ints.append(qmodel(batch).double())
    y_float, y_int = torch.cat(floats), torch.cat(ints)
    steps = (y_float - y_int).abs() / qmodel.output_q.scale
    report = AccuracyReport(x.shape[0], steps.numel(), qmodel.output_q.scale, float((steps <= 1.0).double().mean()),
                            float(steps.max()), float(steps.mean()))
    if y_float.dim() == 2:
        report.agreement = float((y_float.argmax(1) == y_int.argmax(1)).double().mean())
        if labels is not None:
            report.float_accuracy = float((y_float.argmax(1) == labels).double().mean())
            report.int_accuracy = float((y_int.argmax(1) == labels).double().mean())
    return report


__all__ = ["AccuracyReport", "accuracy_report"]
