"""``leanconv bench``: a model's latency in each deployment setting, the fastest one, and with
``--converted`` the realized efficiency of a converted model over its original."""

from __future__ import annotations

import argparse
import json

from leanconv.cli import _shape


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure MODEL (and a converted twin) in each deployment setting; print the table."""
    from pathlib import Path

    import torch

    from leanconv.bench import SETTINGS, benchmark_settings, realized_efficiency
    from leanconv.cli import load_model
    from leanconv.models import DEFAULT_INPUTS

    settings = args.settings.split(",") if args.settings else None
    if settings is not None and any(s not in SETTINGS for s in settings):
        raise ValueError(f"--settings {args.settings!r} must be a comma-separated subset of {','.join(SETTINGS)}")
    input_shape = tuple(args.input) if args.input else (DEFAULT_INPUTS.get(args.model, (None,))[0])
    if input_shape is None:
        raise ValueError(f"--input N,C,H,W is required for MODEL={args.model!r}")
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size} must be >= 1")
        input_shape = (args.batch_size, *input_shape[1:])
    converted = None
    if args.converted:
        folder = Path(args.converted)
        if not (folder / "plan.json").is_file() or not (folder / "model.pt").is_file():
            raise ValueError(f"--converted {folder} must hold plan.json and model.pt (leanconv convert --out)")
    model = load_model(args.model).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    if args.converted:
        from leanconv import apply_plan

        converted = apply_plan(load_model(args.model), json.loads((folder / "plan.json").read_text())).eval()
        converted.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    options = dict(settings=settings, compile=args.compile, threads=args.threads, min_run_time=args.min_run_time,
                   rounds=args.rounds, progress=True)
    if converted is None:
        report = benchmark_settings(model, input_shape, **options)
    else:
        report = realized_efficiency(model, converted, input_shape, **options)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "md":
        print(report.to_markdown(), end="")
    else:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(report.to_markdown()))
    return 0


def add_subcommands(sub) -> None:
    """Register ``leanconv bench``."""
    bench = sub.add_parser("bench", help="latency in each deployment setting (eager, channels_last, BN-folded, "
                                         "frozen, compiled); realized efficiency of a converted model")
    bench.add_argument("model", help="built-in name, package.module:callable or path/to/file.py:callable")
    bench.add_argument("--input", type=_shape, default=None, help="input shape N,C,H,W")
    bench.add_argument("--batch-size", type=int, default=None, help="replace N of --input")
    bench.add_argument("--weights", default=None, help="a state_dict (.pt) to load into MODEL first")
    bench.add_argument("--converted", default=None,
                       help="a leanconv convert output folder: also measure it and report realized efficiency")
    bench.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to build on a CPU)")
    bench.add_argument("--settings", default=None, help="comma-separated subset of the settings to measure")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    bench.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    bench.add_argument("--rounds", type=int, default=1, help="repeat the measurements, interleaved; median")
    bench.add_argument("--format", choices=("table", "md", "json"), default="table")
    bench.set_defaults(func=cmd_bench)


__all__ = ["add_subcommands", "cmd_bench"]
