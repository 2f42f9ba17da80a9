"""The ``leanconv`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import pickle
import sys
from typing import List, Optional, Sequence

from leanconv import __version__
from leanconv.kinds import KINDS

# Modules that add their own subcommands: each has ``add_subcommands(sub)`` taking the
# ``argparse`` subparsers object and calling ``sub.add_parser(...).set_defaults(func=...)``.
# Their heavy imports stay inside the command functions so ``leanconv --help`` stays fast.
COMMAND_MODULES: tuple = ("leanconv.quant.cli", "leanconv.bench_cli", "leanconv.optimize_cli")


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


def _shape(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated ints, e.g. 1,3,224,224")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must contain positive ints")
    return values


def load_model(spec: str):
    """A model from a built-in name, ``package.module:callable`` or ``path/to/file.py:callable``."""
    import importlib
    import importlib.util
    from pathlib import Path

    from leanconv import models

    if spec in models.MODELS:
        return models.create(spec)
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SystemExit(f"leanconv: MODEL={spec!r} must be a built-in name ({', '.join(models.list_models())}), "
                         "package.module:callable or path/to/file.py:callable")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise SystemExit(f"leanconv: MODEL file {target!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(target)
    if not hasattr(module, attr):
        raise SystemExit(f"leanconv: {target!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    model = factory() if callable(factory) and not isinstance(factory, __import__("torch").nn.Module) else factory
    return model


def _emit(text: str, out, force: bool) -> None:
    from pathlib import Path

    from leanconv.analysis.profiling import write_atomic

    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    path = Path(out)
    if path.exists() and not force:
        raise SystemExit(f"leanconv: {path} exists; pass --force to overwrite it")
    write_atomic(path, text)
    print(f"wrote {path}")


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile a model: one row per module call, totals, breakdown by kind."""
    from leanconv.analysis import profile
    from leanconv.models import DEFAULT_INPUTS

    model = load_model(args.model)
    inputs = args.input or list(DEFAULT_INPUTS.get(args.model, ()))
    if not inputs:
        raise SystemExit("leanconv: --input N,C,H,W is required for this model")
    report = profile(model, inputs if len(inputs) > 1 else inputs[0], include_other=args.include_other,
                     batch_size=args.batch_size, device="cpu" if args.measure else "meta",
                     measure_latency=args.measure)
    if args.format == "table" and args.out is None:
        report.print()
    else:
        _emit(report.render(args.format), args.out, args.force)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain one conv: what it does, weight layout, output size and costs with numbers."""
    from leanconv.analysis import explain

    options = {}
    for item in args.option or []:
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "0123456789[{-tfn\"" else value
    result = explain(args.kind, args.input, lang=args.lang, in_channels=args.input[1], out_channels=args.out_channels,
                     kernel_size=args.kernel_size, stride=args.stride,
                     padding=args.padding if args.padding in ("same", "valid") else int(args.padding),
                     dilation=args.dilation, **({"groups": args.groups} if args.groups else {}), **options)
    print(result.text)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The same layer as every applicable kind: params, MACs, bytes, ratios, optional latency."""
    from leanconv.analysis import compare

    result = compare(args.in_channels, args.out_channels, args.kernel_size, tuple(args.size), stride=args.stride,
                     padding=args.padding if args.padding in ("same", "valid") else int(args.padding),
                     dilation=args.dilation, kinds=args.kinds.split(",") if args.kinds else None,
                     upsample=args.upsample, batch_size=args.batch_size, measure=args.measure)
    if args.format == "table" and args.out is None:
        result.print()
    else:
        _emit(result.render(args.format), args.out, args.force)
    return 0


def _calib_batches(spec: Optional[str], input_shape: tuple, batch: int = 64):
    """Calibration batches from 'digits', 'random:N' or a .pt file holding an (N, C, H, W) tensor."""
    import torch

    if spec is None:
        return None
    if spec == "digits":
        from leanconv.data import load_digits

        return list(load_digits(size=input_shape[-1]).train_x[:256].split(batch))
    if spec.startswith("random:"):
        count = int(spec.split(":", 1)[1])
        generator = torch.Generator().manual_seed(0)
        return list(torch.randn((count, *input_shape[1:]), generator=generator).split(batch))
    tensor = torch.load(spec, map_location="cpu", weights_only=True)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
        raise SystemExit(f"leanconv: --calib {spec!r} must hold an (N, C, H, W) tensor")
    return list(tensor.split(batch))


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a model's dense convs; write state_dict, plan.json and report.md to --out."""
    from pathlib import Path

    import torch

    from leanconv._files import check_new_folder, staged_folder
    from leanconv import convert, save_plan
    from leanconv.models import DEFAULT_INPUTS

    out = check_new_folder(args.out, args.force)
    model = load_model(args.model).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    input_shape = tuple(args.input) if args.input else (DEFAULT_INPUTS.get(args.model, (None,))[0])
    if input_shape is None and (args.mac_budget or args.latency_budget or args.calib):
        raise SystemExit("leanconv: --input N,C,H,W is required with --mac-budget, --latency-budget or --calib "
                         "for this model")
    rank = None
    if args.rank:
        rank = tuple(args.rank) if len(args.rank) > 1 else args.rank[0]
    result = convert(model, to=args.to, rank=rank, energy=args.energy, mac_budget=args.mac_budget,
                     latency_budget=args.latency_budget,
                     input_size=input_shape, calib=_calib_batches(args.calib, input_shape or (1,)),
                     exclude=args.exclude, order=args.order, core=args.core,
                     permute=args.permute)
    with staged_folder(out, args.force) as staging:
        torch.save(result.model.state_dict(), staging / "model.pt")
        save_plan(result.plan, staging / "plan.json")
        (staging / "report.md").write_text(f"# leanconv convert {args.model} --to {args.to}\n\n" + result.to_markdown())
    print(result.to_markdown())
    print(f"wrote {out}/model.pt, plan.json, report.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leanconv",
        description="Make convolutional networks lean: efficient conv kinds, their shapes and costs.",
    )
    parser.add_argument("--version", action="version", version=f"leanconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    kinds = sub.add_parser("kinds", help="list every conv kind with its params and MACs formulas")
    kinds.add_argument("--format", choices=("table", "md", "json"), default="table")
    kinds.set_defaults(func=cmd_kinds)

    prof = sub.add_parser("profile", help="profile a model: shapes, params, MACs per layer, totals, by kind")
    prof.add_argument("model", help="built-in name, package.module:callable or path/to/file.py:callable")
    prof.add_argument("--input", type=_shape, action="append", help="input shape N,C,H,W (repeat for several inputs)")
    prof.add_argument("--batch-size", type=int, default=None)
    prof.add_argument("--include-other", action="store_true", help="also count bias/norm/activation/pooling ops")
    prof.add_argument("--measure", action="store_true", help="also measure per-layer latency on the CPU")
    prof.add_argument("--format", choices=("table", "csv", "json", "md"), default="table")
    prof.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout")
    prof.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    prof.set_defaults(func=cmd_profile)

    exp = sub.add_parser("explain", help="explain one conv: layout, output size and costs with numbers")
    exp.add_argument("kind", choices=sorted(KINDS), help="conv kind")
    exp.add_argument("--input", type=_shape, required=True, help="input shape N,C,H,W")
    exp.add_argument("--out-channels", type=int, required=True)
    exp.add_argument("--kernel-size", type=int, default=3)
    exp.add_argument("--stride", type=int, default=1)
    exp.add_argument("--padding", default="0", help="int, 'same' or 'valid'")
    exp.add_argument("--dilation", type=int, default=1)
    exp.add_argument("--groups", type=int, default=None, help="for the grouped and pointwise kinds")
    exp.add_argument("--option", action="append", help="kind option KEY=VALUE, e.g. depth_multiplier=2")
    exp.add_argument("--lang", choices=("en", "zh"), default="en")
    exp.set_defaults(func=cmd_explain)

    cmp_ = sub.add_parser("compare", help="one layer as every applicable kind, side by side")
    cmp_.add_argument("--in-channels", type=int, required=True)
    cmp_.add_argument("--out-channels", type=int, required=True)
    cmp_.add_argument("--kernel-size", type=int, default=3)
    cmp_.add_argument("--size", type=_shape, required=True, help="input H,W")
    cmp_.add_argument("--stride", type=int, default=1)
    cmp_.add_argument("--padding", default="same")
    cmp_.add_argument("--dilation", type=int, default=1)
    cmp_.add_argument("--kinds", default=None, help="comma-separated kinds to keep")
    cmp_.add_argument("--upsample", type=int, default=None, help="compare upsampling layers (factor)")
    cmp_.add_argument("--batch-size", type=int, default=1)
    cmp_.add_argument("--measure", action="store_true", help="measure latency (NCHW and channels_last)")
    cmp_.add_argument("--format", choices=("table", "json", "md"), default="table")
    cmp_.add_argument("--out", default=None)
    cmp_.add_argument("--force", action="store_true")
    cmp_.set_defaults(func=cmd_compare)

    conv = sub.add_parser("convert", help="convert a model's dense convs to an efficient kind, with optimal weights")
    conv.add_argument("model", help="built-in name, package.module:callable or path/to/file.py:callable")
    conv.add_argument("--to", choices=("dsconv", "asymmetric", "tucker2", "grouped"), default="dsconv")
    conv.add_argument("--weights", default=None, help="a state_dict (.pt) to load into the model first")
    conv.add_argument("--rank", type=int, nargs="+", default=None, help="rank (two ints for tucker2)")
    conv.add_argument("--energy", type=float, default=None, help="keep this share of each kernel's energy")
    conv.add_argument("--mac-budget", type=int, default=None, help="total MACs allowed at --input")
    conv.add_argument("--latency-budget", type=float, default=None,
                      help="milliseconds per --input batch on this machine (per-layer timings, cached)")
    conv.add_argument("--input", type=_shape, default=None, help="input shape N,C,H,W")
    conv.add_argument("--calib", default=None, help="refit on: digits | random:N | file.pt with an (N,C,H,W) tensor")
    conv.add_argument("--exclude", action="append", default=None, help="glob of module paths to keep as they are")
    conv.add_argument("--order", choices=("kx1_first", "1xk_first", "depthwise_first", "pointwise_first", "auto"),
                      default=None, help="stage order (asymmetric or dsconv); auto: per layer, least damage per MAC")
    conv.add_argument("--core", choices=("dense", "asymmetric"), default=None,
                      help="tucker2 core; asymmetric = kx1 then 1xk (LPRNet's block shape)")
    conv.add_argument("--permute", action="store_true",
                      help="grouped: reorder channels so more of each kernel's energy stays in the groups")
    conv.add_argument("--out", required=True, help="output folder (model.pt, plan.json, report.md)")
    conv.add_argument("--force", action="store_true", help="replace --out if it exists")
    conv.set_defaults(func=cmd_convert)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_subcommands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except (ValueError, OSError, pickle.UnpicklingError) as error:  # bad arguments or files, existing output
        print(f"leanconv {args.command}: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
