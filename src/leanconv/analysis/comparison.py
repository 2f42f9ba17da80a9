"""``leanconv.compare``: one layer as every applicable kind, side by side.

Params, MACs and activation bytes come from the kind registry (no model is run); with
``measure=True`` each candidate is also built and timed on the current device in NCHW and
channels_last, and the speedup over the dense layer is measured in the same process. For an
upsampling layer (``upsample=s``) the candidates are the transposed conv, the separable
transposed conv (both orders) and resize-then-conv (dense and separable).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from leanconv._validate import check_positive_int, check_positive_pair
from leanconv.analysis.profiling import render_as, render_text
from leanconv.kinds import KINDS, ConvSpec, create_conv2d, get_kind
from leanconv.padding import PaddingArg
from leanconv.timing import measure_latency

_BYTES = 4  # float32 activations


@dataclass
class Candidate:
    """One way to build the layer, with its costs (and latency when measured)."""

    name: str
    kind: str
    options: Dict[str, Any]
    params: int
    macs: int
    activation_bytes: int
    output_shape: Tuple[int, ...]
    params_ratio: float = 1.0
    macs_ratio: float = 1.0
    latency_ms_nchw: Optional[float] = None
    latency_ms_channels_last: Optional[float] = None
    speedup_nchw: Optional[float] = None
    speedup_channels_last: Optional[float] = None


@dataclass
class Comparison:
    """The candidates of :func:`compare`, the first being the baseline."""

    candidates: List[Candidate]
    input_shape: Tuple[int, ...]
    device: str

    def to_markdown(self) -> str:
        measured = self.candidates[0].latency_ms_nchw is not None
        head = ["layer", "kind", "params", "MACs", "activation bytes", "params ratio", "MACs ratio"]
        if measured:
            head += ["NCHW ms", "speedup", "channels_last ms", "speedup"]
        lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for c in self.candidates:
            cells = [c.name, c.kind, f"{c.params:,}", f"{c.macs:,}", f"{c.activation_bytes:,}",
                     f"{c.params_ratio:.3f}", f"{c.macs_ratio:.3f}"]
            if measured:
                cells += [f"{c.latency_ms_nchw:.3f}", f"{c.speedup_nchw:.2f}", f"{c.latency_ms_channels_last:.3f}",
                          f"{c.speedup_channels_last:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps({"input_shape": list(self.input_shape), "device": self.device,
                           "candidates": [asdict(c) for c in self.candidates]}, indent=2)

    def print(self, console=None) -> None:
        from rich.console import Console
        from rich.markdown import Markdown

        (console or Console()).print(Markdown(self.to_markdown()))

    def render(self, fmt: str) -> str:
        """The comparison as text: ``'table'``, ``'json'`` or ``'md'``."""
        return render_as(fmt, {"table": lambda: render_text(self.print), "json": self.to_json, "md": self.to_markdown})


def _candidates(spec: ConvSpec, upsample: Optional[int]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(label, kind, options) for every registered kind that can stand in for this layer: the
    upsampling kinds for an upsampling layer, the others otherwise, each as its entry's rows."""
    return [(label, kind.name, options) for kind in KINDS.values()
            if kind.compare_rows is not None and kind.upsamples == bool(upsample)
            for label, options in kind.compare_rows(spec)]


def _kind_names(kinds: Any) -> Optional[List[str]]:
    """``kinds`` as a list of names: one name, or a list of them (a string is never its letters)."""
    if kinds is None:
        return None
    names = [kinds] if isinstance(kinds, str) else list(kinds) if isinstance(kinds, (list, tuple, set)) else None
    if names is None or not all(isinstance(k, str) for k in names):
        raise ValueError(f"kinds={kinds!r} must be a kind name or a list of them (leanconv.kinds.KINDS)")
    return names


def _layer_spec(kind: str, spec: ConvSpec, options: Dict[str, Any]) -> ConvSpec:
    """The layer's arguments as ``kind`` takes them: a resize-then-conv kind upsamples by its
    scale option, so its conv keeps the size (stride 1, 'same')."""
    if get_kind(kind).scale_option is not None:
        return replace(spec, stride=(1, 1), padding="same", options=options)
    return replace(spec, options=options)


def compare(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Tuple[int, int],
    input_size: int | Tuple[int, int],
    stride: int | Tuple[int, int] = 1,
    padding: PaddingArg = "same",
    dilation: int | Tuple[int, int] = 1,
    kinds: Optional[Sequence[str]] = None,
    upsample: Optional[int] = None,
    batch_size: int = 1,
    measure: bool = False,
    device: str | torch.device = "cpu",
    min_run_time: float = 0.1,
) -> Comparison:
    """The same layer as every applicable kind: params, MACs, activation bytes, ratios to dense.

    ``input_size`` is ``(H, W)`` (or an int). ``upsample=s`` compares upsampling layers that
    enlarge the input ``s`` times (stride ``s`` for transposed convs). ``kinds`` keeps only the
    candidates whose kind is listed. ``measure=True`` times each candidate on ``device``.
    """
    check_positive_int(in_channels, "in_channels")
    check_positive_int(out_channels, "out_channels")
    check_positive_int(batch_size, "batch_size")
    kernel = check_positive_pair(kernel_size, "kernel_size")
    hw = check_positive_pair(input_size, "input_size")
    kinds = _kind_names(kinds)
    if isinstance(min_run_time, bool) or not isinstance(min_run_time, (int, float)) or not min_run_time > 0:
        raise ValueError(f"min_run_time={min_run_time!r} must be a number of seconds > 0")
    if upsample is not None:
        check_positive_int(upsample, "upsample")
        stride = upsample
    layer = ConvSpec.create(in_channels, out_channels, kernel, stride, padding, dilation)
    rows = _candidates(layer, upsample)
    if kinds is not None:
        unknown = [k for k in kinds if k not in {kind for _, kind, _ in rows}]
        if unknown:
            raise ValueError(f"kinds={list(kinds)} include {unknown}, not applicable here; choose from "
                             f"{sorted({kind for _, kind, _ in rows})}")
        rows = [r for r in rows if r[1] in kinds or r is rows[0]]
    candidates: List[Candidate] = []
    for label, kind, options in rows:
        spec = _layer_spec(kind, layer, options)
        entry = get_kind(kind)
        walk = entry.walk(spec, hw)
        params, macs, out_shape = entry.params(spec), entry.macs(spec, hw), entry.output_shape(spec, hw)
        act = (in_channels * hw[0] * hw[1] + sum(math.prod(r.output_shape) for r in walk)) * _BYTES
        candidates.append(Candidate(label, kind, options, params, macs * batch_size, act * batch_size,
                                    (batch_size, *out_shape)))
    base = candidates[0]
    for c in candidates:
        c.params_ratio, c.macs_ratio = c.params / base.params, c.macs / base.macs
    if measure:
        _measure(candidates, layer, hw, batch_size, torch.device(device), min_run_time)
    return Comparison(candidates, (batch_size, in_channels, *hw), str(device))


def _measure(candidates: List[Candidate], layer: ConvSpec, hw: Tuple[int, int], batch: int, device: torch.device,
             min_run_time: float) -> None:
    x = torch.randn(batch, layer.in_channels, *hw, device=device)
    for c in candidates:
        spec = _layer_spec(c.kind, layer, c.options)
        module = create_conv2d(c.kind, spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride,
                               spec.padding, spec.dilation, **c.options)
        module = module.to(device).eval()
        c.latency_ms_nchw = measure_latency(module, x, min_run_time)
        cl = module.to(memory_format=torch.channels_last)
        c.latency_ms_channels_last = measure_latency(cl, x.contiguous(memory_format=torch.channels_last), min_run_time)
    base = candidates[0]
    for c in candidates:
        c.speedup_nchw = base.latency_ms_nchw / c.latency_ms_nchw
        c.speedup_channels_last = base.latency_ms_channels_last / c.latency_ms_channels_last


__all__ = ["Candidate", "Comparison", "compare"]
