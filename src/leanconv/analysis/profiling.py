"""``leanconv.profile``: one row per module call with shapes and costs, totals, and a by-kind breakdown.

Runs on the meta device by default (nothing computed or allocated), so any model and input
size is analysed at once; a model whose ops need tensor values is counted on one real pass. See :mod:`leanconv.analysis.counting` for the counting rules.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from leanconv._modes import evaluating
from leanconv._files import write_atomic
from leanconv._validate import torch_device
from leanconv.analysis.counting import (ModuleCall, Sizes, Trace, meta_copy, model_dtype, normalize_sizes,
                                        outside_inference_mode, real_trace, trace_model)
from leanconv.kinds import kind_of_conv

InputSize = Sizes

KIND_ORDER = ("dense", "grouped", "depthwise", "pointwise", "transposed", "linear")


def conv_kind(call: ModuleCall) -> str:
    """The kind of a counted call: a registered single-conv kind (``dense``, ``pointwise``,
    ``depthwise``, ``grouped``, ``transposed``: :func:`leanconv.kinds.kind_of_conv`), or
    ``linear`` for a matrix product and ``other`` for the rest (MobileNet's Table 2 breakdown)."""
    if not call.is_conv:
        return "linear" if call.macs else "other"
    return kind_of_conv(call.weight_shape, call.groups, call.transposed)


@dataclass
class LayerRow:
    """One module call that did work itself."""

    path: str
    module: str
    kind: str
    input_shape: Optional[Tuple[int, ...]]
    weight_shape: Optional[Tuple[int, ...]]
    output_shape: Optional[Tuple[int, ...]]
    params: int
    macs: int
    other_ops: int
    activation_bytes: int
    intensity: float
    latency_ms: Optional[float] = None

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass
class Profile:
    """The result of :func:`profile`: rows, totals and the breakdown by kind."""

    rows: List[LayerRow]
    total_params: int
    input_shapes: List[Tuple[int, ...]]
    device: str
    include_other: bool = False
    by_kind: Dict[str, Dict[str, float]] = field(default_factory=dict)
    peak_activation_bytes: int = 0
    input_bytes: int = 0
    param_bytes: int = 0
    notes: List[str] = field(default_factory=list)  # e.g. a real pass counted instead of the meta one

    @property
    def peak_memory_bytes(self) -> int:
        """Inference memory at the peak: inputs + weights + live intermediate activations."""
        return self.input_bytes + self.param_bytes + self.peak_activation_bytes

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def total_other_ops(self) -> int:
        return sum(r.other_ops for r in self.rows)

    # ------------------------------------------------------------------ renderings
    COLUMNS = ("path", "module", "kind", "input_shape", "weight_shape", "output_shape", "params", "macs",
               "other_ops", "activation_bytes", "intensity", "latency_ms")

    def _cells(self, row: LayerRow) -> List[str]:
        def shape(s: Optional[Tuple[int, ...]]) -> str:
            return "x".join(str(v) for v in s) if s else "-"

        return [row.path or "(root)", row.module, row.kind, shape(row.input_shape), shape(row.weight_shape),
                shape(row.output_shape), f"{row.params:,}", f"{row.macs:,}", f"{row.other_ops:,}",
                f"{row.activation_bytes:,}", f"{row.intensity:.2f}",
                "-" if row.latency_ms is None else f"{row.latency_ms:.3f}"]

    def _visible_columns(self) -> List[int]:
        hidden = set()
        if not self.include_other:
            hidden.add("other_ops")
        if all(r.latency_ms is None for r in self.rows):
            hidden.add("latency_ms")
        return [i for i, c in enumerate(self.COLUMNS) if c not in hidden]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "input_shapes": [list(s) for s in self.input_shapes],
            "device": self.device,
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "total_other_ops": self.total_other_ops,
            "by_kind": self.by_kind,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "notes": self.notes,
            "rows": [{**asdict(r), "flops": r.flops} for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.COLUMNS)
        for r in self.rows:
            writer.writerow([r.path, r.module, r.kind, _join(r.input_shape), _join(r.weight_shape),
                             _join(r.output_shape), r.params, r.macs, r.other_ops, r.activation_bytes,
                             f"{r.intensity:.4f}", "" if r.latency_ms is None else f"{r.latency_ms:.4f}"])
        return buffer.getvalue()

    def to_markdown(self) -> str:
        cols = self._visible_columns()
        lines = ["| " + " | ".join(self.COLUMNS[i] for i in cols) + " |",
                 "|" + "|".join("---:" if self.COLUMNS[i] in _NUMERIC else "---" for i in cols) + "|"]
        for r in self.rows:
            cells = self._cells(r)
            lines.append("| " + " | ".join(cells[i] for i in cols) + " |")
        lines += ["", self.summary_text(), "", "| kind | layers | params | MACs | share of MACs |",
                  "|---|---:|---:|---:|---:|"]
        for kind, v in self.by_kind.items():
            lines.append(f"| {kind} | {int(v['layers'])} | {int(v['params']):,} | {int(v['macs']):,} | {v['share']:.1%} |")
        return "\n".join(lines) + "\n"

    def summary_text(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        text = (f"input {shapes}: {self.total_params:,} params, {self.total_macs:,} MACs "
                f"({self.total_flops / 1e9:.3f} GFLOPs = 2 x MACs), conv + linear only; peak inference memory "
                f"{self.peak_memory_bytes / 2**20:.1f} MiB (inputs + weights + "
                f"{self.peak_activation_bytes / 2**20:.1f} MiB live activations)")
        return "\n".join([text, *(f"note: {note}" for note in self.notes)])

    def print(self, console=None) -> None:
        """Render as a terminal table (rich)."""
        from rich.console import Console
        from rich.table import Table

        if console is None:
            console = Console()
            if not console.is_terminal or console.width < 160:
                console = Console(width=max(console.width, 200) if not console.is_terminal else console.width)
        cols = self._visible_columns()
        table = Table(title="leanconv profile", show_footer=False)
        for i in cols:
            table.add_column(self.COLUMNS[i], justify="right" if self.COLUMNS[i] in _NUMERIC else "left",
                             overflow="fold")
        for r in self.rows:
            cells = self._cells(r)
            table.add_row(*[cells[i] for i in cols])
        console.print(table)
        kinds = Table(title="by kind")
        for column in ("kind", "layers", "params", "MACs", "share of MACs"):
            kinds.add_column(column, justify="left" if column == "kind" else "right")
        for kind, v in self.by_kind.items():
            kinds.add_row(kind, str(int(v["layers"])), f"{int(v['params']):,}", f"{int(v['macs']):,}", f"{v['share']:.1%}")
        console.print(kinds)
        console.print(self.summary_text())

    def render(self, fmt: str) -> str:
        """The report as text: ``'csv'``, ``'json'``, ``'md'`` or ``'table'``."""
        return render_as(fmt, {"table": lambda: render_text(self.print), "csv": self.to_csv, "json": self.to_json,
                               "md": self.to_markdown})

    def save(self, path: Union[str, os.PathLike], fmt: Optional[str] = None, force: bool = False) -> Path:
        """Write the report atomically; the format follows the suffix unless ``fmt`` is given."""
        path = Path(path)
        fmt = fmt or {".csv": "csv", ".json": "json", ".md": "md"}.get(path.suffix, "table")
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists: pass force=True (--force) to overwrite it")
        write_atomic(path, self.render(fmt))
        return path


_NUMERIC = {"params", "macs", "other_ops", "activation_bytes", "intensity", "latency_ms"}


def _join(shape: Optional[Tuple[int, ...]]) -> str:
    return "x".join(str(v) for v in shape) if shape else ""


def render_as(fmt: str, renderers: Dict[str, Callable[[], str]]) -> str:
    """``renderers[fmt]()``: a report in the format asked for (ValueError listing the formats)."""
    if fmt not in renderers:
        raise ValueError(f"fmt={fmt!r} must be one of {tuple(renderers)}")
    return renderers[fmt]()


def render_text(print_to_console) -> str:
    """What ``print_to_console(console)`` shows on a 200-column terminal, as plain text."""
    from rich.console import Console

    console = Console(record=True, width=200, file=io.StringIO())
    print_to_console(console)
    return console.export_text()


def _params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


@outside_inference_mode
def profile(
    model: nn.Module,
    input_size: Optional[InputSize] = None,
    inputs: Optional[Sequence[torch.Tensor]] = None,
    *,
    batch_size: Optional[int] = None,
    device: Union[str, torch.device] = "meta",
    dtype: Optional[torch.dtype] = None,
    include_other: bool = False,
    measure_latency: bool = False,
    repeats: int = 20,
) -> Profile:
    """Profile ``model`` on inputs of ``input_size`` (or on the given example ``inputs``).

    On the meta device (default) nothing is computed: a copy of the model is moved there, so
    the model you pass is never changed. When an op needs tensor values there (models imported
    from ONNX: Resize, Reshape, Slice reading a tensor), one real pass on the model's own device
    counts instead, with one warning and a note in the report; ``device='cpu'`` (or another real
    device) always counts on a real pass. ``include_other`` adds rows and a column for bias,
    norm, activation and pooling element ops. ``measure_latency`` times each module call on
    real tensors of the model's own device (warm-up, median of ``repeats``). ``dtype``: of the
    inputs made from ``input_size`` (None: the model's own, so a half model is profiled in half).
    """
    inputs, device, dtype = _checked(model, inputs, device, dtype, repeats)
    if inputs is None:
        if input_size is None:
            raise ValueError("pass input_size (e.g. (1, 3, 224, 224)) or example inputs")
        sizes = normalize_sizes(input_size, batch_size)
    else:
        sizes = [tuple(t.shape) for t in inputs]
    if device.type == "meta":
        trace = trace_model(model, sizes, dtype, inputs=inputs)
    else:
        trace = real_trace(model, sizes, dtype, device, inputs)
    calls, tensors = trace.calls, trace.inputs
    latencies = _measure(model, sizes, inputs, repeats, dtype) if measure_latency else {}
    rows: List[LayerRow] = []
    for call in calls:
        if not call.macs and not (include_other and call.other_ops):
            continue
        weight_bytes = _params_of(call.module) * torch.finfo(dtype).bits // 8
        moved = call.input_bytes + call.output_bytes + weight_bytes
        rows.append(LayerRow(
            path=call.path, module=type(call.module).__name__, kind=conv_kind(call),
            input_shape=call.input_shape, weight_shape=call.weight_shape, output_shape=call.output_shape,
            params=_params_of(call.module), macs=call.macs, other_ops=call.other_ops,
            activation_bytes=call.input_bytes + call.output_bytes,
            intensity=call.macs / moved if moved else 0.0,
            latency_ms=latencies.get(call.path),
        ))
    result = Profile(rows, sum(p.numel() for p in model.parameters()), sizes, str(trace.device), include_other)
    result.by_kind = _by_kind(rows)
    result.peak_activation_bytes = calls[0].peak_bytes if calls else 0
    result.input_bytes = sum(t.numel() * t.element_size() for t in tensors)
    result.param_bytes = trace.param_bytes
    result.notes = _notes(trace)
    return result


def _checked(model: Any, inputs: Any, device: Any, dtype: Any,
             repeats: Any) -> Tuple[Optional[List[torch.Tensor]], torch.device, torch.dtype]:
    """profile's arguments checked, one clear line each: the example inputs as a list, the
    device, and the dtype (None: the model's own)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be an nn.Module")
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if inputs is not None and (not isinstance(inputs, (list, tuple)) or not inputs
                               or not all(isinstance(t, torch.Tensor) for t in inputs)):
        raise ValueError(f"inputs={inputs!r:.40} must be an example tensor or a list of them")
    place = torch_device(device)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r} must be a floating torch.dtype (e.g. torch.float16) or None for the model's own")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an int >= 1")
    return (None if inputs is None else list(inputs)), place, dtype or model_dtype(model)


def _notes(trace: Trace) -> List[str]:
    """What a reader must know to read the totals: a real pass instead of the meta one, and a
    model whose MACs are not those of convolutions."""
    notes = [trace.fallback] if trace.fallback else []
    if not any(c.is_conv for c in trace.calls):
        if any(c.macs for c in trace.calls):
            notes.append("the model runs no convolution: its MACs are those of its matrix products (linear layers)")
        else:
            notes.append("the model runs no convolution and no matrix product: 0 MACs "
                         "(include_other=True shows its element ops)")
    return notes


def _by_kind(rows: Sequence[LayerRow]) -> Dict[str, Dict[str, float]]:
    total = sum(r.macs for r in rows) or 1
    out: Dict[str, Dict[str, float]] = {}
    for kind in (*KIND_ORDER, "other"):
        chosen = [r for r in rows if r.kind == kind]
        if chosen:
            macs = sum(r.macs for r in chosen)
            out[kind] = {"layers": len(chosen), "params": sum(r.params for r in chosen), "macs": macs,
                         "share": macs / total}
    return out


def _measure(model: nn.Module, sizes, inputs, repeats: int, dtype: torch.dtype) -> Dict[str, float]:
    """Median wall time of each module call on real tensors (after two warm-up passes)."""
    import statistics
    import time

    first_param = next(model.parameters(), None)
    device = first_param.device if first_param is not None else torch.device("cpu")
    tensors = list(inputs) if inputs is not None else [torch.randn(s, device=device, dtype=dtype) for s in sizes]
    names = {m: n for n, m in model.named_modules()}
    starts: Dict[nn.Module, List[float]] = {}
    samples: Dict[str, List[float]] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def pre(module, args):
        sync()
        starts.setdefault(module, []).append(time.perf_counter())

    def post(module, args, output):
        sync()
        samples.setdefault(names[module], []).append((time.perf_counter() - starts[module].pop()) * 1e3)

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with evaluating(model), torch.inference_mode():
            for _ in range(2):
                model(*tensors)
            samples.clear()
            for _ in range(max(1, repeats)):
                model(*tensors)
    finally:
        for h in handles:
            h.remove()
    return {name: statistics.median(values) for name, values in samples.items()}


__all__ = ["LayerRow", "Profile", "conv_kind", "meta_copy", "profile", "render_text"]
