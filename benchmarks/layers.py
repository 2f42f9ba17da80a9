"""Latency of each conv kind against the dense 3x3 conv it replaces, NCHW and channels_last.

For typical shapes (channels@size) and batch sizes, every kind that replaces a dense 3x3
``C -> C`` conv (padding 'same', stride 1, no bias) is built from the kind registry, timed with
``torch.utils.benchmark`` (warm-up calls, then the median of adaptive runs) in inference mode,
float32 on the CPU, and reported next to its MAC ratio. Speedup = dense latency / kind latency,
measured in the same process and the same memory format, so the ratio compares like with like;
realized efficiency = speedup x MAC ratio (1.0: exactly as much faster as the MACs promise).

    python benchmarks/layers.py                       # full table (several minutes)
    python benchmarks/layers.py --quick --out /tmp/x  # smoke run (seconds)

Writes ``layers.json`` (raw numbers and metadata) and ``layers.md`` (one table per shape and
batch) under ``--out``, atomically, and refuses to replace them without ``--force``. A kind whose
layer cannot be built (ImportError/AttributeError, or a ValueError for this shape) is skipped
with a note on stderr and listed under ``skipped`` in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

import leanconv
from leanconv._files import write_atomic
from leanconv.bench import measure_latency as time_ms
from leanconv.kinds import ConvSpec, get_kind

DEFAULT_SHAPES = "64@112,128@56,256@28,512@14"
MEMORY_FORMATS = (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last))

# Candidates that replace Conv2d(C, C, 3, padding='same'): name -> registry kind.
# resize_conv (upsamples), dsconv_transpose (transposed) and pointwise (1x1) are not replacements.
CANDIDATES: Dict[str, str] = {
    "dense": "dense",
    "grouped": "grouped",
    "depthwise": "depthwise",
    "dsconv": "dsconv",
    "asymmetric": "asymmetric",
    "asym_parallel": "asym_parallel",
    "acblock": "acblock",
    "acblock_fused": "acblock",
    "tucker2": "tucker2",
}


def label(kind: str, groups: int) -> str:
    return {
        "dense": "dense 3x3",
        "grouped": f"grouped 3x3 (g={groups})",
        "depthwise": "depthwise 3x3",
        "dsconv": "depthwise separable",
        "asymmetric": "3x1 then 1x3",
        "asym_parallel": "parallel 1x3, 3x1 (concat)",
        "acblock": "ACBlock (training form)",
        "acblock_fused": "ACBlock fused",
        "tucker2": "Tucker-2 (C/4, C/4)",
    }[kind]


def options_for(kind: str, channels: int, groups: int) -> Dict[str, Any]:
    """The registry options that make ``kind`` a C -> C replacement of a dense 3x3."""
    if kind == "grouped":
        return {"groups": groups}
    if kind == "dsconv":
        return {"depth_multiplier": 1}
    if kind == "asymmetric":
        return {"mid_channels": channels}
    if kind == "tucker2":
        rank = max(1, channels // 4)
        return {"ranks": (rank, rank)}
    return {}


def cpu_name() -> str:
    """The CPU's model name (one definition: leanconv.deploy.target.cpu_name)."""
    from leanconv.deploy.target import cpu_name as name

    return name()


def build(kind: str, channels: int, groups: int) -> Tuple[torch.nn.Module, ConvSpec, str]:
    """The module (eval mode), the spec its MACs are counted with, and that spec's registry kind."""
    registry_kind = CANDIDATES[kind]
    options = options_for(kind, channels, groups)
    spec = ConvSpec.create(channels, channels, 3, 1, "same", bias=False, **options)
    module = leanconv.create_conv2d(registry_kind, channels, channels, 3, 1, "same", bias=False, **options).eval()
    if kind == "acblock_fused":
        if not callable(getattr(module, "fuse", None)):
            raise AttributeError(f"{type(module).__name__} has no fuse()")
        module = module.fuse().eval()
        registry_kind = "dense"  # deployed: one 3x3 conv (with the folded BN bias)
        spec = ConvSpec.create(channels, channels, 3, 1, "same", bias=True)
    return module, spec, registry_kind


def warm_up(channels: int, size: int, batch: int, seconds: float, groups: int) -> None:
    """Run the dense baseline untimed first, so the first timed candidate pays no cold start."""
    module, _, _ = build("dense", channels, groups)
    x = torch.randn(batch, channels, size, size)
    for _, memory_format in MEMORY_FORMATS:
        time_ms(module.to(memory_format=memory_format), x.contiguous(memory_format=memory_format), seconds)


def run(shapes: List[Tuple[int, int]], batches: List[int], kinds: List[str], min_run_time: float,
        groups: int, progress, note) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Time every kind at every (shape, batch); returns (rows, skipped)."""
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    task = progress.add_task("timing", total=len(shapes) * len(batches) * len(kinds))
    for channels, size in shapes:
        for batch in batches:
            baseline: Dict[str, float] = {}
            base_macs: Optional[int] = None
            progress.update(task, description=f"warm-up {channels}@{size} b{batch}")
            warm_up(channels, size, batch, min_run_time, groups)
            for kind in kinds:
                progress.update(task, description=f"{kind} {channels}@{size} b{batch}")
                try:
                    module, spec, registry_kind = build(kind, channels, groups)
                except (ImportError, AttributeError, ValueError) as error:
                    if kind == "dense":
                        raise
                    note(f"skipping {kind} at {channels}@{size} batch {batch}: {type(error).__name__}: {error}")
                    skipped.append(dict(kind=kind, channels=channels, size=size, batch=batch,
                                        error=f"{type(error).__name__}: {error}"))
                    progress.advance(task)
                    continue
                macs = get_kind(registry_kind).macs(spec, (size, size)) * batch
                params = sum(p.numel() for p in module.parameters())
                row: Dict[str, Any] = dict(kind=kind, label=label(kind, groups), channels=channels, size=size,
                                           batch=batch, params=params, macs=macs)
                x = torch.randn(batch, channels, size, size)
                for fmt, memory_format in MEMORY_FORMATS:
                    m = module.to(memory_format=memory_format)
                    row[f"latency_ms_{fmt}"] = time_ms(m, x.contiguous(memory_format=memory_format), min_run_time)
                if kind == "dense":
                    baseline = {fmt: row[f"latency_ms_{fmt}"] for fmt, _ in MEMORY_FORMATS}
                    base_macs = macs
                row["mac_ratio"] = macs / base_macs if base_macs else None
                for fmt, _ in MEMORY_FORMATS:
                    row[f"speedup_{fmt}"] = baseline[fmt] / row[f"latency_ms_{fmt}"] if baseline else None
                speedups = [row[f"speedup_{fmt}"] for fmt, _ in MEMORY_FORMATS if row[f"speedup_{fmt}"]]
                row["efficiency_best"] = max(speedups) * row["mac_ratio"] if speedups and row["mac_ratio"] else None
                rows.append(row)
                progress.advance(task)
    return rows, skipped


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: List[Dict[str, Any]], skipped: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [
        "# Layer latency vs the dense 3x3 it replaces",
        "",
        f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, {meta['dtype']}, {meta['device']}, "
        f"inference mode, median of `torch.utils.benchmark` adaptive runs ({meta['min_run_time']} s each), "
        f"{meta['date']}. Every candidate replaces `Conv2d(C, C, 3, padding='same', bias=False)`.",
        "",
        "Speedup = dense latency / kind latency, same run, same memory format (NCHW or channels_last: "
        "model and input converted). Efficiency = best speedup x MAC ratio "
        "(1.0 = exactly as much faster as the MAC count promises).",
        "",
    ]
    groups: Dict[Tuple[int, int, int], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["channels"], row["size"], row["batch"]), []).append(row)
    for (channels, size, batch), group in groups.items():
        lines += [f"## {channels} channels @ {size}x{size}, batch {batch}", "",
                  "| kind | params | MACs | MAC ratio vs dense | latency NCHW ms | speedup NCHW "
                  "| latency channels_last ms | speedup channels_last | efficiency (best) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            lines.append(
                f"| {r['label']} | {r['params']:,} | {r['macs']:,} | {_fmt(r['mac_ratio'], '.3f')} "
                f"| {r['latency_ms_nchw']:.3f} | {_fmt(r['speedup_nchw'], '.2f')} "
                f"| {r['latency_ms_channels_last']:.3f} | {_fmt(r['speedup_channels_last'], '.2f')} "
                f"| {_fmt(r['efficiency_best'], '.2f')} |"
            )
        lines.append("")
    if skipped:
        lines += ["## Skipped", ""]
        lines += [f"- {s['kind']} at {s['channels']}@{s['size']} batch {s['batch']}: {s['error']}" for s in skipped]
        lines.append("")
    return "\n".join(lines)


def parse_shapes(parser: argparse.ArgumentParser, text: str) -> List[Tuple[int, int]]:
    try:
        shapes = [(int(c), int(s)) for c, s in (item.split("@") for item in text.split(","))]
    except ValueError:
        parser.error(f"--shapes={text!r} must look like 64@112,128@56 (channels@size)")
    if any(c < 1 or s < 1 for c, s in shapes):
        parser.error(f"--shapes={text!r}: channels and size must be >= 1")
    return shapes


def parse_ints(parser: argparse.ArgumentParser, name: str, text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{name}={text!r} must be a comma-separated list of ints")
    if any(v < 1 for v in values):
        parser.error(f"{name}={text!r}: every value must be >= 1")
    return values


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="channels@size list (default: %(default)s)")
    parser.add_argument("--batches", default="1,16", help="batch sizes (default: %(default)s)")
    parser.add_argument("--kinds", default=",".join(CANDIDATES),
                        help="candidates, comma-separated; dense, the baseline, is always timed first "
                             "(default: %(default)s)")
    parser.add_argument("--groups", type=int, default=4, help="groups of the 'grouped' candidate (default: %(default)s)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds per adaptive measurement (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own, one per physical core)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one small shape (32@28), batch 1, min-run-time capped at 0.05 s")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing layers.json/layers.md")
    args = parser.parse_args(argv)

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in CANDIDATES]
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; choose from {list(CANDIDATES)}")
    kinds = ["dense"] + [k for k in dict.fromkeys(kinds) if k != "dense"]
    shapes = parse_shapes(parser, "32@28" if args.quick else args.shapes)
    batches = [1] if args.quick else parse_ints(parser, "--batches", args.batches)
    if args.min_run_time <= 0:
        parser.error(f"--min-run-time={args.min_run_time} must be > 0")
    if args.groups < 1:
        parser.error(f"--groups={args.groups} must be >= 1")
    min_run_time = min(args.min_run_time, 0.05) if args.quick else args.min_run_time
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    targets = [out / "layers.json", out / "layers.md"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        print(f"refusing to overwrite {', '.join(existing)}: pass --force or choose another --out; "
              "nothing was measured or written", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.progress import Progress

    stderr = Console(stderr=True)
    torch.manual_seed(0)
    with Progress(console=stderr, transient=True) as progress:
        rows, skipped = run(shapes, batches, kinds, min_run_time, args.groups, progress,
                            lambda text: progress.console.print(text, markup=False, highlight=False, soft_wrap=True))
    meta = dict(
        cpu=cpu_name(), cpu_count=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
        python=platform.python_version(), platform=platform.platform(),
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        dtype="float32", device="cpu", memory_formats=[fmt for fmt, _ in MEMORY_FORMATS],
        inference_mode=True, min_run_time=min_run_time, warmup_calls=3, statistic="median",
        shapes=[f"{c}@{s}" for c, s in shapes], batches=batches, kinds=kinds, groups=args.groups,
        quick=args.quick, layer="C -> C, kernel 3, stride 1, padding 'same', bias=False",
    )
    write_atomic(targets[0], json.dumps({"meta": meta, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    text = markdown(rows, skipped, meta)
    write_atomic(targets[1], text)
    print(text)
    print(f"wrote {targets[0]} and {targets[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
