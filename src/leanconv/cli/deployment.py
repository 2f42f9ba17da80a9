"""``leanconv bench``, ``quantize`` and ``export-hls``: measure, quantize and emit HLS C++."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List, Optional, Tuple

from leanconv.cli.common import CALIB_HELP, add_device, add_model, add_out, calibration_batches, check_converted, check_fits, \
    check_device, check_out_folder, console, input_shape, load_converted, load_model, load_tensors, load_weights, non_negative_int, \
    parse_shape, positive_float, positive_int, rows_csv


def _settings(text: Optional[str]) -> Optional[List[str]]:
    from leanconv.bench import SETTINGS

    settings = text.split(",") if text else None
    if settings is not None and any(s not in SETTINGS for s in settings):
        raise ValueError(f"--settings {text!r} must be a comma-separated subset of {','.join(SETTINGS)}")
    return settings


def _print_bench(report: Any, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif fmt == "md":
        print(report.to_markdown(), end="")
    elif fmt == "csv":
        table = report.to_dict()
        rows = table.get("per_setting") or table.get("results") or []
        print(rows_csv(rows), end="")
    else:
        from rich.markdown import Markdown

        console().print(Markdown(report.to_markdown()))


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure MODEL (and a converted twin) in each deployment setting; print the table."""
    from leanconv.bench import benchmark_settings, realized_efficiency

    settings = _settings(args.settings)
    device = check_device(args.device)
    shape = input_shape(args.input, args.model)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size} must be >= 1")
        shape = (args.batch_size, *shape[1:])
    if args.converted:
        check_converted(args.converted)  # before any measurement
    model = load_weights(load_model(args.model).eval(), args.weights)
    check_fits(model, shape, f"--input={','.join(map(str, shape))}")  # before any measurement starts
    if args.targets is not None:
        return _bench_targets(args, model, shape, device)
    options = dict(settings=settings, compile=args.compile, threads=args.threads, min_run_time=args.min_run_time,
                   rounds=args.rounds, progress=True, device=device)
    if args.converted:
        converted = load_converted(args.model, args.converted)[0].eval()
        report = realized_efficiency(model, converted, shape, **options)
    else:
        report = benchmark_settings(model, shape, **options)
    _print_bench(report, args.format)
    return 0


def _bench_targets(args: argparse.Namespace, model: Any, shape: Tuple[int, ...], device: Optional[str]) -> int:
    """``--targets``: MODEL (and --converted) on every target x precision; the fastest marked."""
    from leanconv.cli.optimization import target_lists
    from leanconv.deploy.measure import measure_targets

    targets, precisions = target_lists(args.targets, args.precisions)
    models = {"original": model}
    if args.converted:
        models["converted"] = load_converted(args.model, args.converted)[0].eval()
    calib = calibration_batches(args.calib, shape, batch=shape[0]) if args.calib else None
    report = measure_targets(models, shape, targets=None if targets == "all" else targets, precisions=precisions,
                             calib=calib, device=device, threads=args.threads or 1, rounds=args.rounds,
                             min_run_time=args.min_run_time, progress=lambda text: console(stderr=True).print(text))
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "csv":
        print(rows_csv([{k: v for k, v in r.items() if k != "samples"} for r in report.to_dict()["rows"]]), end="")
    else:
        print(report.to_markdown(), end="")
        if args.converted:
            print("\n" + report.summary("original", "converted"))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a model on calibration data; write qmodel.pt, scales.json and report.md to --out."""
    import torch

    from leanconv._files import staged_folder
    from leanconv.quant import accuracy_report, hazard_report, quantize

    out = check_out_folder(args)
    settings = {}
    if args.dialect == "apfixed":
        settings = {"narrowing": args.narrowing, "store": args.store, "min_factor_bits": args.min_factor_bits}
    elif args.rounding:
        settings = {"rounding": args.rounding}
    shape = input_shape(args.input, args.model)
    model = load_weights(load_model(args.model).eval(), args.weights)
    calib = calibration_batches(args.calib, shape)
    qmodel = quantize(model, calib, args.dialect, observer=args.observer, percentile=args.percentile,
                      per_channel=not args.per_tensor, progress=True, **settings)
    hazards = hazard_report(qmodel, calib)
    accuracy = accuracy_report(qmodel, model, torch.cat(calib))
    scales = {"dialect": qmodel.dialect.to_dict(), "input": qmodel.input_q.to_dict(),
              "layers": [{k: (str(v) if k == "relu" else v) for k, v in row.items()} for row in qmodel.summary_rows()]}
    report = (f"# leanconv quantize {args.model} --dialect {args.dialect}\n\n{qmodel!r}\n\n"
              f"## Float vs integer on the calibration data\n\n{accuracy.to_markdown()}\n"
              f"## Hazards\n\n{hazards.to_markdown()}")
    with staged_folder(out, args.force) as staging:
        qmodel.save(staging / "qmodel.pt")
        (staging / "scales.json").write_text(json.dumps(scales, indent=2) + "\n")
        (staging / "report.md").write_text(report)
    print(report)
    print(f"wrote {out}/qmodel.pt, scales.json, report.md")
    return 0


def cmd_export_hls(args: argparse.Namespace) -> int:
    """Write HLS C++, golden data, testbench and Makefile for a quantized model; --check runs it."""
    from leanconv.export.hls import export_hls
    from leanconv.quant import QuantizedModel

    check_out_folder(args)
    source = Path(args.qmodel)
    path = source / "qmodel.pt" if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"QMODEL={args.qmodel!r} must be a folder from `leanconv quantize` or its qmodel.pt")
    qmodel = QuantizedModel.from_dict(load_tensors(str(path), "QMODEL"))  # a corrupt or pickled file: one line
    names = args.names.split(",") if args.names else None
    try:  # --check compiles and runs the testbench in the staging folder, before the output appears
        project = export_hls(qmodel, args.out, vectors=args.vectors, seed=args.seed, names=names, top=args.top,
                             weights=args.weights, pragmas=args.pragmas, margin=args.margin, force=args.force,
                             check=args.check)
    except RuntimeError as error:
        print(f"leanconv export-hls: --check cannot run: {error}")
        return 1
    print(project.hazards)
    print(f"wrote {project.directory}/: {', '.join(project.files)}")
    if project.ap_types is None:
        print("note: the ap_types headers were not found (pip install hls4ml); pass AP_TYPES=... to make")
    if not args.check:
        return 0
    result = project.check
    print(result.output.strip())
    print("check: PASS (bit-exact)" if result.passed else f"check: FAIL ({result.mismatches} mismatches)")
    return 0 if result.passed else 1


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="latency in each deployment setting (eager, channels_last, BN-folded, "
                                         "frozen, compiled); realized efficiency of a converted model")
    add_model(bench, weights_help="a state_dict (.pt) to load into MODEL first")
    bench.add_argument("--input", type=parse_shape, default=None, help="input shape N,C,H,W")
    bench.add_argument("--batch-size", type=int, default=None, help="replace N of --input")
    bench.add_argument("--converted", default=None,
                       help="a leanconv convert output folder: also measure it and report realized efficiency")
    bench.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to build on a CPU)")
    bench.add_argument("--settings", default=None, help="comma-separated subset of the settings to measure")
    bench.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    bench.add_argument("--min-run-time", type=positive_float, default=0.2, help="seconds per measurement")
    bench.add_argument("--rounds", type=positive_int, default=3,
                       help="interleaved rounds; each figure is the median with its range over rounds")
    bench.add_argument("--targets", default=None,
                       help="measure on deployment targets instead of PyTorch settings: all, or comma-separated "
                            "names (torch, torch-frozen, torch-compile, onnxruntime, openvino)")
    bench.add_argument("--precisions", default=None, help="with --targets: comma-separated fp32, bf16, int8, ...")
    bench.add_argument("--calib", default=None, help=f"with --targets, int8 calibration: {CALIB_HELP}")
    add_device(bench, "measures")
    bench.add_argument("--format", choices=("table", "md", "csv", "json"), default="table")
    bench.set_defaults(func=cmd_bench)


def _add_quantize(sub: Any) -> None:
    quant = sub.add_parser("quantize", help="int8-quantize a model (apfixed or tflite dialect) on calibration data")
    add_model(quant, weights_help="a state_dict (.pt) to load into the model first")
    quant.add_argument("--calib", required=True, help=CALIB_HELP)
    quant.add_argument("--input", type=parse_shape, default=None, help="input shape N,C,H,W")
    quant.add_argument("--dialect", choices=("apfixed", "tflite"), default="apfixed")
    quant.add_argument("--narrowing", choices=("round", "trunc", "floor"), default="round", help="apfixed")
    quant.add_argument("--store", choices=("saturate", "wrap"), default="saturate", help="apfixed")
    quant.add_argument("--min-factor-bits", type=int, default=8, help="apfixed: fewest significant factor bits")
    quant.add_argument("--rounding", choices=("double", "single"), default=None, help="tflite")
    quant.add_argument("--observer", choices=("minmax", "percentile"), default="minmax")
    quant.add_argument("--percentile", type=float, default=99.99)
    quant.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default per channel)")
    add_out(quant, "output folder (qmodel.pt, scales.json, report.md)")
    quant.set_defaults(func=cmd_quantize)


def _add_export_hls(sub: Any) -> None:
    hls = sub.add_parser("export-hls", help="HLS C++ + golden data + self-checking testbench for a quantized model")
    hls.add_argument("qmodel", help="a folder written by `leanconv quantize` (or its qmodel.pt)")
    hls.add_argument("--vectors", type=positive_int, default=2, help="random golden input vectors")
    hls.add_argument("--seed", type=int, default=0)
    hls.add_argument("--names", default=None, help="comma-separated C function names, one per layer")
    hls.add_argument("--top", default="leanconv_top", help="top function name")
    hls.add_argument("--weights", choices=("const", "args"), default="const", help="constant arrays or arguments")
    hls.add_argument("--pragmas", action="store_true", help="add Vitis HLS pipeline/unroll pragmas")
    hls.add_argument("--margin", type=non_negative_int, default=0, help="at least this many zeros around every buffer")
    hls.add_argument("--check", action="store_true", help="build with g++ and run the testbench")
    add_out(hls, "output folder")
    hls.set_defaults(func=cmd_export_hls)


def add_commands(sub: Any) -> None:
    """Register ``bench``, ``quantize`` and ``export-hls``."""
    _add_bench(sub)
    _add_quantize(sub)
    _add_export_hls(sub)


__all__ = ["add_commands", "cmd_bench", "cmd_export_hls", "cmd_quantize"]
