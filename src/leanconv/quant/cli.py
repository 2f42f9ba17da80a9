"""``leanconv quantize`` and ``leanconv export-hls``."""

from __future__ import annotations

import argparse


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a model on calibration data; write qmodel.pt, scales.json and report.md to --out."""
    import json
    from pathlib import Path

    import torch

    from leanconv._files import check_new_folder, staged_folder
    from leanconv.cli import _calib_batches, load_model
    from leanconv.models import DEFAULT_INPUTS
    from leanconv.quant import accuracy_report, hazard_report, quantize

    out = check_new_folder(args.out, args.force)
    settings = {}
    if args.dialect == "apfixed":
        settings = {"narrowing": args.narrowing, "store": args.store, "min_factor_bits": args.min_factor_bits}
    elif args.rounding:
        settings = {"rounding": args.rounding}
    input_shape = tuple(args.input) if args.input else DEFAULT_INPUTS.get(args.model, (None,))[0]
    if input_shape is None:
        raise ValueError(f"--input N,C,H,W is required for MODEL={args.model!r}")
    model = load_model(args.model).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    calib = _calib_batches(args.calib, input_shape)
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
    from pathlib import Path

    from leanconv._files import check_new_folder
    from leanconv.export.hls import check_hls, export_hls
    from leanconv.quant import QuantizedModel

    check_new_folder(args.out, args.force)
    source = Path(args.qmodel)
    path = source / "qmodel.pt" if source.is_dir() else source
    if not path.is_file():
        raise ValueError(f"QMODEL={args.qmodel!r} must be a folder from `leanconv quantize` or its qmodel.pt")
    qmodel = QuantizedModel.load(path)
    names = args.names.split(",") if args.names else None
    project = export_hls(qmodel, args.out, vectors=args.vectors, seed=args.seed, names=names, top=args.top,
                         weights=args.weights, pragmas=args.pragmas, margin=args.margin, force=args.force)
    print(project.hazards)
    print(f"wrote {project.directory}/: {', '.join(project.files)}")
    if project.ap_types is None:
        print("note: the ap_types headers were not found (pip install hls4ml); pass AP_TYPES=... to make")
    if not args.check:
        return 0
    try:
        result = check_hls(project.directory)
    except RuntimeError as error:
        print(f"leanconv export-hls: --check cannot run: {error}")
        return 1
    print(result.output.strip())
    print("check: PASS (bit-exact)" if result.passed else f"check: FAIL ({result.mismatches} mismatches)")
    return 0 if result.passed else 1


def _shape(text: str) -> tuple:
    from leanconv.cli import _shape as parse

    return parse(text)


def add_subcommands(sub) -> None:
    """Register ``quantize`` and ``export-hls``."""
    quant = sub.add_parser("quantize", help="int8-quantize a model (apfixed or tflite dialect) on calibration data")
    quant.add_argument("model", help="built-in name, package.module:callable or path/to/file.py:callable")
    quant.add_argument("--weights", default=None, help="a state_dict (.pt) to load into the model first")
    quant.add_argument("--calib", required=True, help="digits | random:N | file.pt with an (N,C,H,W) tensor")
    quant.add_argument("--input", type=_shape, default=None, help="input shape N,C,H,W")
    quant.add_argument("--dialect", choices=("apfixed", "tflite"), default="apfixed")
    quant.add_argument("--narrowing", choices=("round", "trunc", "floor"), default="round", help="apfixed")
    quant.add_argument("--store", choices=("saturate", "wrap"), default="saturate", help="apfixed")
    quant.add_argument("--min-factor-bits", type=int, default=8, help="apfixed: fewest significant factor bits")
    quant.add_argument("--rounding", choices=("double", "single"), default=None, help="tflite")
    quant.add_argument("--observer", choices=("minmax", "percentile"), default="minmax")
    quant.add_argument("--percentile", type=float, default=99.99)
    quant.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default per channel)")
    quant.add_argument("--out", required=True, help="output folder (qmodel.pt, scales.json, report.md)")
    quant.add_argument("--force", action="store_true", help="replace --out if it exists")
    quant.set_defaults(func=cmd_quantize)

    hls = sub.add_parser("export-hls", help="HLS C++ + golden data + self-checking testbench for a quantized model")
    hls.add_argument("qmodel", help="a folder written by `leanconv quantize` (or its qmodel.pt)")
    hls.add_argument("--out", required=True, help="output folder")
    hls.add_argument("--vectors", type=int, default=2, help="random golden input vectors")
    hls.add_argument("--seed", type=int, default=0)
    hls.add_argument("--names", default=None, help="comma-separated C function names, one per layer")
    hls.add_argument("--top", default="leanconv_top", help="top function name")
    hls.add_argument("--weights", choices=("const", "args"), default="const", help="constant arrays or arguments")
    hls.add_argument("--pragmas", action="store_true", help="add Vitis HLS pipeline/unroll pragmas")
    hls.add_argument("--margin", type=int, default=0, help="at least this many zeros around every buffer")
    hls.add_argument("--check", action="store_true", help="build with g++ and run the testbench")
    hls.add_argument("--force", action="store_true", help="replace --out if it exists")
    hls.set_defaults(func=cmd_export_hls)
