"""``leanconv kinds``, ``profile``, ``explain`` and ``compare``: what a conv or a model costs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any, Dict, List

from leanconv.cli.common import add_model, check_choice, console, input_shape, load_model, parse_shape, rows_csv, \
    write_text

SYMBOLS = ("Symbols: C in channels, O out channels, kh x kw kernel, g groups, m depth multiplier, "
           "H x W input size, H' x W' output size. MAC = one multiply-accumulate (FLOPs = 2 x MACs).")


def _kinds_rows() -> List[Dict[str, str]]:
    from leanconv.kinds import KINDS

    return [{"kind": k.name, "layer": k.layer_name, "description": k.summary, "params": k.params_formula,
             "macs": k.macs_formula} for k in KINDS.values()]


def cmd_kinds(args: argparse.Namespace) -> int:
    """List every conv kind with a one-line description and its params/MACs formulas."""
    rows = _kinds_rows()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if args.format == "csv":
        print(rows_csv(rows), end="")
        return 0
    if args.format == "md":
        print("| kind | layer | what it is | params | MACs |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['kind']}` | `{r['layer']}` | {r['description']} | `{r['params']}` | `{r['macs']}` |")
        return 0
    from rich.table import Table

    table = Table(title="leanconv conv kinds", show_lines=True)
    for column in ("kind", "what it is", "params", "MACs"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["kind"], f"{r['description']}\n[dim]{r['layer']}[/dim]", r["params"], r["macs"])
    console().print(table)
    print(SYMBOLS)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile a model: one row per module call, totals, breakdown by kind."""
    from leanconv import profile
    from leanconv._files import check_new_file

    if args.out is not None:
        check_new_file(args.out, args.force)
    model = load_model(args.model)
    inputs = args.input or [input_shape(None, args.model)]
    _check_inputs_count(model, len(inputs))
    report = profile(model, inputs if len(inputs) > 1 else inputs[0], include_other=args.include_other,
                     batch_size=args.batch_size, device="cpu" if args.measure else "meta",
                     measure_latency=args.measure)
    if args.format == "table" and args.out is None:
        report.print(console())
    else:
        write_text(report.render(args.format), args.out, args.force)
    return 0


def _check_inputs_count(model: Any, count: int) -> None:
    """One ``--input`` per argument of MODEL's forward: a count it cannot take is one line."""
    import inspect

    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # no signature to read (a builtin): the call says it
        return
    try:
        signature.bind(*range(count))
    except TypeError as error:
        raise ValueError(f"--input given {count} time(s), but MODEL's forward{signature} cannot take {count} "
                         f"input(s): {error}") from None


def _padding(text: str) -> Any:
    if text in ("same", "valid"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--padding={text!r} must be an int, 'same' or 'valid'") from None


def _options(items: List[str]) -> Dict[str, Any]:
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option={item!r} must be KEY=VALUE, e.g. depth_multiplier=2")
        try:  # numbers, lists, true/false/null as JSON; anything else as the text (the kind checks it)
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain one conv: what it does, weight layout, output size and costs with numbers."""
    from leanconv import explain
    from leanconv.kinds import KINDS

    check_choice(args.kind, "KIND", list(KINDS), " (see `leanconv kinds`)")
    result = explain(args.kind, args.input, lang=args.lang, in_channels=args.input[1], out_channels=args.out_channels,
                     kernel_size=args.kernel_size, stride=args.stride, padding=_padding(args.padding),
                     dilation=args.dilation, **({"groups": args.groups} if args.groups else {}),
                     **_options(args.option))
    print(result.text)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The same layer as every applicable kind: params, MACs, bytes, ratios, optional latency."""
    from leanconv import compare
    from leanconv._files import check_new_file

    if args.out is not None:
        check_new_file(args.out, args.force)
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)  # --size 8 is 8x8
    result = compare(args.in_channels, args.out_channels, args.kernel_size, size, stride=args.stride,
                     padding=_padding(args.padding), dilation=args.dilation,
                     kinds=args.kinds.split(",") if args.kinds else None,
                     upsample=args.upsample, batch_size=args.batch_size, measure=args.measure)
    if args.format == "table" and args.out is None:
        result.print(console())
    elif args.format == "csv":
        write_text(rows_csv(asdict(c) for c in result.candidates), args.out, args.force)
    else:
        write_text(result.render(args.format), args.out, args.force)
    return 0


def _add_profile(sub: Any) -> None:
    prof = sub.add_parser("profile", help="profile a model: shapes, params, MACs per layer, totals, by kind")
    add_model(prof)
    prof.add_argument("--input", type=parse_shape, action="append",
                      help="input shape N,C,H,W (repeat for several inputs)")
    prof.add_argument("--batch-size", type=int, default=None)
    prof.add_argument("--include-other", action="store_true", help="also count bias/norm/activation/pooling ops")
    prof.add_argument("--measure", action="store_true", help="also measure per-layer latency on the CPU")
    prof.add_argument("--format", choices=("table", "csv", "json", "md"), default="table")
    prof.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout")
    prof.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    prof.set_defaults(func=cmd_profile)


def _add_explain(sub: Any) -> None:
    exp = sub.add_parser("explain", help="explain one conv: layout, output size and costs with numbers")
    exp.add_argument("kind", help="a conv kind: see `leanconv kinds`")
    exp.add_argument("--input", type=parse_shape, required=True, help="input shape N,C,H,W")
    exp.add_argument("--out-channels", type=int, required=True)
    exp.add_argument("--kernel-size", type=int, default=3)
    exp.add_argument("--stride", type=int, default=1)
    exp.add_argument("--padding", default="0", help="int, 'same' or 'valid'")
    exp.add_argument("--dilation", type=int, default=1)
    exp.add_argument("--groups", type=int, default=None, help="for the grouped and pointwise kinds")
    exp.add_argument("--option", action="append", help="kind option KEY=VALUE, e.g. depth_multiplier=2")
    exp.add_argument("--lang", choices=("en", "zh"), default="en")
    exp.set_defaults(func=cmd_explain)


def _add_compare(sub: Any) -> None:
    cmp_ = sub.add_parser("compare", help="one layer as every applicable kind, side by side")
    cmp_.add_argument("--in-channels", type=int, required=True)
    cmp_.add_argument("--out-channels", type=int, required=True)
    cmp_.add_argument("--kernel-size", type=int, default=3)
    cmp_.add_argument("--size", type=parse_shape, required=True, help="input H,W (or one number: square)")
    cmp_.add_argument("--stride", type=int, default=1)
    cmp_.add_argument("--padding", default="same")
    cmp_.add_argument("--dilation", type=int, default=1)
    cmp_.add_argument("--kinds", default=None, help="comma-separated kinds to keep")
    cmp_.add_argument("--upsample", type=int, default=None, help="compare upsampling layers (factor)")
    cmp_.add_argument("--batch-size", type=int, default=1)
    cmp_.add_argument("--measure", action="store_true", help="measure latency (NCHW and channels_last)")
    cmp_.add_argument("--format", choices=("table", "csv", "json", "md"), default="table")
    cmp_.add_argument("--out", default=None)
    cmp_.add_argument("--force", action="store_true")
    cmp_.set_defaults(func=cmd_compare)


def add_commands(sub: Any) -> None:
    """Register ``kinds``, ``profile``, ``explain`` and ``compare``."""
    kinds = sub.add_parser("kinds", help="list every conv kind with its params and MACs formulas")
    kinds.add_argument("--format", choices=("table", "md", "csv", "json"), default="table")
    kinds.set_defaults(func=cmd_kinds)
    _add_profile(sub)
    _add_explain(sub)
    _add_compare(sub)


__all__ = ["add_commands", "cmd_compare", "cmd_explain", "cmd_kinds", "cmd_profile"]
