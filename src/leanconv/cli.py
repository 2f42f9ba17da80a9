"""The ``leanconv`` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from leanconv import __version__
from leanconv.kinds import KINDS


def _kinds_rows() -> List[dict]:
    return [
        {
            "kind": k.name,
            "layer": k.layer,
            "description": k.summary,
            "params": k.params_formula,
            "macs": k.macs_formula,
        }
        for k in KINDS.values()
    ]


def cmd_kinds(args: argparse.Namespace) -> int:
    """List every conv kind with a one-line description and its params/MACs formulas."""
    rows = _kinds_rows()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if args.format == "md":
        print("| kind | layer | what it is | params | MACs |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['kind']}` | `{r['layer']}` | {r['description']} | `{r['params']}` | `{r['macs']}` |")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="leanconv conv kinds", show_lines=True)
    for column in ("kind", "what it is", "params", "MACs"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["kind"], f"{r['description']}\n[dim]{r['layer']}[/dim]", r["params"], r["macs"])
    Console().print(table)
    print(
        "Symbols: C in channels, O out channels, kh x kw kernel, g groups, m depth multiplier, "
        "H x W input size, H' x W' output size. MAC = one multiply-accumulate (FLOPs = 2 x MACs)."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leanconv",
        description="Make convolutional networks lean: efficient conv kinds, their costs, fusion.",
    )
    parser.add_argument("--version", action="version", version=f"leanconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    kinds = sub.add_parser("kinds", help="list every conv kind with its params and MACs formulas")
    kinds.add_argument("--format", choices=("table", "md", "json"), default="table")
    kinds.set_defaults(func=cmd_kinds)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
