"""``leanconv convert``: a model's dense convs as an efficient kind, with optimal weights."""

from __future__ import annotations

import argparse
from typing import Any

from leanconv.cli.common import CALIB_HELP, add_device, add_model, add_out, calibration_batches, check_choice, check_fits, \
    check_device, check_out_folder, input_shape, load_model, load_weights, parse_shape, warn_untrained


def check_to(value: str) -> str:
    """``--to`` must be a kind the registry can convert to (read at run time, never hard-coded), or auto."""
    from leanconv.kinds import convertible_kinds

    return check_choice(value, "--to", (*convertible_kinds(), "auto"))


NOT_MET = 3
"""Exit code of ``convert --to auto`` when no mix meets the request (nothing written without --accept-slower)."""


def _say(line: str) -> None:
    import sys

    print(f"leanconv convert: {line}", file=sys.stderr, flush=True)


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a model's dense convs; write state_dict, plan.json and report.md to --out."""
    import torch

    from leanconv import convert, save_plan
    from leanconv._files import staged_folder

    check_to(args.to)
    device = check_device(args.device)
    out = check_out_folder(args)
    model = load_weights(load_model(args.model).eval(), args.weights)
    needs_input = bool(args.mac_budget or args.latency_budget or args.calib or args.to == "auto")
    shape = input_shape(args.input, args.model, required=False)
    if shape is None and needs_input:
        raise ValueError("--input N,C,H,W is required with --to auto, --mac-budget, --latency-budget or --calib for "
                         "this model")
    calib = calibration_batches(args.calib, shape or (1,))
    if calib:
        check_fits(model, (1, *calib[0].shape[1:]), f"--calib={args.calib!r}")
    rank = None
    if args.rank:
        rank = tuple(args.rank) if len(args.rank) > 1 else args.rank[0]
    from leanconv.conversion.mixed import RequestNotMet

    # always passed: convert refuses the auto-only ones with another --to, in one line
    auto = dict(target=args.target, precision=args.precision, target_speedup=args.target_speedup, kinds=args.kinds,
                accept_slower=args.accept_slower, **(dict(threads=args.threads, progress=_say) if args.to == "auto" else {}))
    try:
        result = convert(model, to=args.to, rank=rank, energy=args.energy, mac_budget=args.mac_budget,
                         latency_budget=args.latency_budget, input_size=shape, calib=calib, exclude=args.exclude,
                         order=args.order, core=args.core, permute=args.permute, keep_stem=not args.convert_stem,
                         device=device, **auto)
    except RequestNotMet as error:
        print(f"leanconv convert: {error}", file=__import__("sys").stderr)
        return NOT_MET
    with staged_folder(out, args.force) as staging:
        torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, staging / "model.pt")
        save_plan(result.plan, staging / "plan.json")
        (staging / "report.md").write_text(f"# leanconv convert {args.model} --to {args.to}\n\n" + result.to_markdown())
        if result.search is not None:
            _plot_front(result.search, staging / "front.png")
    print(result.to_markdown())
    print(f"wrote {out}/model.pt, plan.json, report.md")
    warn_untrained(args.model, args.weights, "convert")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``convert``."""
    conv = sub.add_parser("convert", help="convert a model's dense convs to an efficient kind, with optimal weights")
    add_model(conv)
    conv.add_argument("--to", default="dsconv",
                      help="a convertible kind (see `leanconv kinds`), or auto: each layer's kind and rank chosen by "
                           "latency measured on --target; default dsconv")
    conv.add_argument("--weights", default=None, help="a state_dict (.pt) to load into the model first")
    conv.add_argument("--rank", type=int, nargs="+", default=None, help="rank (two ints for tucker2)")
    conv.add_argument("--energy", type=float, default=None, help="keep this share of each kernel's energy")
    conv.add_argument("--mac-budget", type=int, default=None, help="total MACs allowed at --input")
    conv.add_argument("--latency-budget", type=float, default=None,
                      help="milliseconds per --input batch on this machine (per-layer timings, cached)")
    conv.add_argument("--input", type=parse_shape, default=None, help="input shape N,C,H,W")
    conv.add_argument("--calib", default=None, help=f"refit on: {CALIB_HELP}")
    conv.add_argument("--exclude", action="append", default=None, help="glob of module paths to keep as they are")
    conv.add_argument("--convert-stem", action="store_true",
                      help="also convert the first conv on the image (kept dense by default, as MobileNet does)")
    add_device(conv, "converts and refits")
    # --order and --core are checked against the --to kind's registry entry when the command runs
    conv.add_argument("--order", default=None,
                      help="stage order of the --to kind (see `leanconv kinds`); auto: per layer, least damage per MAC")
    conv.add_argument("--core", default=None,
                      help="tucker2 core: dense or asymmetric (kx1 then 1xk: LPRNet's block shape)")
    conv.add_argument("--permute", action="store_true",
                      help="grouped: reorder channels so more of each kernel's energy stays in the groups")
    _add_auto(conv)
    add_out(conv, "output folder (model.pt, plan.json, report.md)")
    conv.set_defaults(func=cmd_convert)


def _add_auto(conv: Any) -> None:
    """The ``--to auto`` options."""
    auto = conv.add_argument_group("--to auto (per-layer kinds chosen by latency measured on a deployment target)")
    auto.add_argument("--target", default=None, help="deployment target to measure on: onnxruntime, openvino, torch, ...")
    auto.add_argument("--precision", default=None,
                      help="fp32, bf16, int8 ... (default: every precision --target runs here is searched, and the "
                           "one whose mix meets the request with the least error kept)")
    auto.add_argument("--target-speedup", type=float, default=None,
                      help="x, against the dense model at its best on --target (or give --latency-budget in ms there)")
    auto.add_argument("--kinds", nargs="+", default=None, help="search only these kinds (default: every searched kind)")
    auto.add_argument("--threads", type=int, default=1, help="threads the target runs on (default 1)")
    auto.add_argument("--accept-slower", action="store_true",
                      help=f"when no mix meets the request, write the closest one (its report says so first) instead "
                           f"of writing nothing and exiting {NOT_MET}")


def _plot_front(search: Any, path: Any) -> None:
    """The search's front as a plot, when matplotlib is installed (the report has the numbers)."""
    try:
        from leanconv.plots import plot_front
    except ImportError:
        return
    try:
        plot_front(search, path)
    except ImportError:
        pass


__all__ = ["NOT_MET", "add_commands", "check_to", "cmd_convert"]
