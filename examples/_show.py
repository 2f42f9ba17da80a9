"""Printing helpers shared by the seed examples (shapes and costs from the kind registry)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from rich.console import Console
from rich.table import Table

from leanconv import ConvSpec, get_kind

console = Console(width=120)


def stage_table(title: str, kind: str, spec: ConvSpec, in_hw: Sequence[int], batch: int = 1) -> int:
    """Print each stage of ``kind`` with input, weight and output shapes and MACs; return MACs."""
    registry = get_kind(kind)
    table = Table(title=f"{title}  [dim]({kind})[/dim]")
    for column in ("stage", "op", "input", "weight", "output", "params", "MACs"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    total = 0
    for row in registry.walk(spec, in_hw):
        stage = row.stage
        params = sum(int(torch.Size(s).numel()) for s in stage.param_shapes().values())
        table.add_row(
            stage.name or "(conv)", stage.op,
            str((batch, *row.input_shape)), str(stage.weight_shape or "-"), str((batch, *row.output_shape)),
            f"{params:,}", f"{row.macs * batch:,}",
        )
        total += row.macs * batch
    table.add_row("total", "", "", "", "", f"{registry.params(spec):,}", f"{total:,}", style="bold")
    console.print(table)
    return total


def compare_table(title: str, rows: Iterable[tuple[str, int, int]], baseline: str) -> None:
    """Print (name, params, MACs) rows with their ratio to the ``baseline`` row."""
    rows = list(rows)
    base = {name: (p, m) for name, p, m in rows}[baseline]
    table = Table(title=title)
    for column in ("layer", "params", "MACs", "params / " + baseline, "MACs / " + baseline):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, params, macs in rows:
        table.add_row(name, f"{params:,}", f"{macs:,}", f"{params / base[0]:.3f}", f"{macs / base[1]:.3f}")
    console.print(table)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_macs(module: torch.nn.Module, *input_shapes: Sequence[int]) -> int:
    """Conv/linear MACs counted by PyTorch's FlopCounterMode (FLOPs / 2), batch included.

    Runs on the meta device: nothing is computed or allocated, so large inputs are instant.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta_module = copy.deepcopy(module).to("meta").eval()
    inputs = [torch.empty(*shape, device="meta") for shape in input_shapes]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_module(*inputs)
    return counter.get_total_flops() // 2
