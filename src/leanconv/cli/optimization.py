"""``leanconv optimize`` and ``leanconv demo``: the whole path, from the command line."""

from __future__ import annotations

import argparse
from typing import Any, List, Optional, Tuple

from leanconv.cli.common import add_device, add_model, add_out, check_choice, check_fits, check_out_folder, console, given, \
    check_device, load_model, load_weights, non_negative_int, positive_float, positive_int, unit_float, warn_untrained


def _print_summary(result: Any, out: Optional[str]) -> None:
    from rich.table import Table

    table = Table(title="original vs converted")
    for column in ("", "original", "converted"):
        table.add_column(column, justify="left" if not column else "right")
    for row in result.summary_rows():
        table.add_row(*row)
    screen = console()
    screen.print(table)
    for note in result.notes:
        screen.print(f"note: {note}")
    if out is not None:
        screen.print(f"report: {out}/report.md (plots: candidates.png, layers.png; weights: model.pt + plan.json)")


def cmd_optimize(args: argparse.Namespace) -> int:
    """Convert, refit, distill, deploy and measure a model on its data; write a report folder."""
    from leanconv.data import load_data
    from leanconv.kinds import convertible_kinds
    from leanconv.optimization import optimize

    check_choice(args.to, "--to", (*convertible_kinds(), "auto"))
    device = check_device(args.device)
    targets, precisions = target_lists(args.targets, args.precisions)
    search = _search_arguments(args, targets, precisions)
    check_out_folder(args)
    model = load_weights(load_model(args.model).eval(), args.weights)
    warn_untrained(args.model, args.weights, "optimize")  # before the long run, as before
    data = load_data(args.data)
    check_fits(model, (1, *data.sample_shape), f"--data={args.data!r}")  # before the long run
    result = optimize(model, data, to=args.to, rank=args.rank, mac_fraction=args.mac_fraction,
                      target_speedup=args.target_speedup, epochs=args.epochs, lr=args.lr,
                      calib_images=args.calib_images, exclude=args.exclude, keep_stem=not args.convert_stem,
                      batch_sizes=tuple(args.batch_size), sweep=not args.no_sweep, out=args.out, force=args.force,
                      min_run_time=args.measure_time, title=f"leanconv optimize {args.model} --data {args.data}",
                      device=device, targets=targets, precisions=precisions, **search, **given(alpha=args.alpha))
    _print_summary(result, args.out)
    return 0


def _search_arguments(args: argparse.Namespace, targets: Any, precisions: Optional[List[str]]) -> dict:
    """``--to auto``: one --target name is the search target (else the original's fastest), one
    --precision the search precision (else each), --search-batch the batch (else the largest)."""
    if args.to != "auto":
        if args.search_batch is not None:
            raise ValueError("--search-batch applies only to --to auto")
        return {}
    if args.target_speedup is None:
        raise ValueError("--to auto chooses each layer's kind and rank for a --target-speedup: give --target-speedup")
    one_target = targets[0] if isinstance(targets, list) and len(targets) == 1 else None
    one_precision = precisions[0] if precisions is not None and len(precisions) == 1 else None
    return {"search_target": one_target, "search_precision": one_precision, "search_batch": args.search_batch}


def cmd_demo(args: argparse.Namespace) -> int:
    """The digits CNN, each layer's kind chosen by latency on the fastest target, refit, distilled, deployed, measured."""
    from leanconv.demo import DISTILL_EPOCHS, run_demo

    device = check_device(args.device)
    targets, _ = target_lists(args.targets, None)
    check_out_folder(args)
    epochs = DISTILL_EPOCHS if args.epochs is None else args.epochs
    result = run_demo(args.out, args.force, epochs=epochs, batch_sizes=tuple(args.batch_size), device=device,
                      targets=targets)
    _print_summary(result, args.out)
    return 0


def target_lists(targets: str, precisions: Optional[str]) -> Tuple[Any, Optional[List[str]]]:
    """``--targets`` ('all', 'none' or comma-separated names) and ``--precisions``, each name checked."""
    from leanconv.deploy.target import PRECISIONS, registered

    if targets in ("none", ""):
        return None, None
    names = "all" if targets == "all" else [t.strip() for t in targets.split(",")]
    for name in names if names != "all" else []:
        check_choice(name, "--targets", sorted(registered()))
    chosen = None if precisions is None else [p.strip() for p in precisions.split(",")]
    for name in chosen or []:
        check_choice(name, "--precisions", PRECISIONS)
    return names, chosen


TARGETS_HELP = ("deployment targets to measure both models on: all (every one available here), none, or names "
                "(torch, torch-frozen, torch-compile, onnxruntime, openvino)")


def _add_optimize(sub: Any) -> None:
    opt = sub.add_parser("optimize", help="convert, refit, distill, fuse and benchmark a model on its data")
    add_model(opt, weights_help="the trained model's state_dict (.pt)")
    opt.add_argument("--data", required=True, help="digits | cifar10:PATH | folder:PATH | PATH")
    opt.add_argument("--to", default="dsconv",
                     help="a convertible kind (see `leanconv kinds`), or auto: each layer's kind and rank chosen by "
                          "latency measured on the target (one --target name, else the original's fastest); "
                          "default dsconv")
    target = opt.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank", type=int, help="the same rank in every converted layer")
    target.add_argument("--mac-fraction", type=float, help="fraction in (0, 1] of the original MACs "
                                                          "(convert's --mac-budget is a MAC count)")
    target.add_argument("--target-speedup", type=float, help="measured speedup at batch 1, e.g. 2")
    opt.add_argument("--epochs", type=non_negative_int, default=3, help="distillation epochs (0: refit only)")
    opt.add_argument("--lr", type=positive_float, default=1e-3, help="distillation learning rate (Adam)")
    opt.add_argument("--alpha", type=unit_float, default=None,
                     help="distillation: weight of the teacher's soft targets (default: leanconv.train.DEFAULT_ALPHA)")
    opt.add_argument("--calib-images", type=positive_int, default=256, help="training images for the refit")
    opt.add_argument("--exclude", action="append", default=None, help="glob of module paths to keep dense")
    opt.add_argument("--convert-stem", action="store_true", help="also convert the first conv on the image")
    opt.add_argument("--batch-size", type=positive_int, nargs="+", default=[1, 16], help="batch sizes to measure")
    opt.add_argument("--no-sweep", action="store_true", help="try only the setting asked for")
    opt.add_argument("--search-batch", type=positive_int, default=None,
                     help="--to auto: the batch size the per-layer search measures at (default: the largest --batch-size)")
    opt.add_argument("--targets", "--target", default="all", help=TARGETS_HELP)
    opt.add_argument("--precisions", "--precision", default=None,
                     help="comma-separated: fp32, bf16, int8 ... (default: the device's)")
    add_device(opt, "converts, distills and measures")
    opt.add_argument("--measure-time", type=positive_float, default=0.2,
                     help="seconds of timing per measurement (more: steadier numbers)")
    add_out(opt, "output folder (must not exist unless --force)")
    opt.set_defaults(func=cmd_optimize)


def add_commands(sub: Any) -> None:
    """Register ``optimize`` and ``demo``."""
    _add_optimize(sub)
    demo = sub.add_parser("demo", help="optimize the built-in digits CNN end to end (a few minutes on a CPU)")
    add_out(demo, "output folder (default: ./leanconv-demo)", required=False, default="leanconv-demo")
    demo.add_argument("--epochs", type=non_negative_int, default=None,
                      help="distillation epochs (default: leanconv.demo.DISTILL_EPOCHS, 10)")
    demo.add_argument("--batch-size", type=positive_int, nargs="+", default=[1, 16], help="batch sizes to measure")
    demo.add_argument("--targets", default="all", help=TARGETS_HELP)
    add_device(demo, "trains, converts and measures")
    demo.set_defaults(func=cmd_demo)


__all__ = ["add_commands", "cmd_demo", "cmd_optimize"]
