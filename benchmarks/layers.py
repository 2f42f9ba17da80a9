"""Latency of each conv kind against the dense 3x3 conv it replaces, NCHW and channels_last.

For typical shapes (channels@size) and batch sizes, every kind that replaces a dense 3x3
``C -> C`` conv is built from the registry, timed with ``torch.utils.benchmark`` (warm-up, then
the median of adaptive runs) in inference mode, and reported next to its MAC ratio. Speedup =
dense latency / kind latency, measured in the same process and memory format, so the ratio
compares like with like; realized efficiency = speedup x MAC ratio (1.0 means the kind is as
fast as its MAC count promises).

    python benchmarks/layers.py                       # full table (several minutes)
    python benchmarks/layers.py --quick --out /tmp/x  # smoke run

Writes ``layers.json`` (raw numbers and metadata) and ``layers.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

import leanconv
from leanconv.analysis.profile import write_atomic
from leanconv.bench import measure_latency as time_ms
from leanconv.kinds import ConvSpec, get_kind

DEFAULT_SHAPES = "64@112,128@56,256@28,512@14"

# kind -> (label, options for a C -> C 3x3 replacement, whether to time the fused form)
CANDIDATES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "dense": ("dense 3x3", {}),
    "grouped": ("grouped 3x3 (g=4)", {"groups": 4}),
    "depthwise": ("depthwise 3x3", {}),
    "dsconv": ("depthwise separable", {"depth_multiplier": 1}),
    "asymmetric": ("3x1 then 1x3", {}),
    "asym_parallel": ("parallel 1x3, 3x1 (concat)", {}),
    "acblock": ("ACBlock (training form)", {}),
    "acblock_fused": ("ACBlock fused", {}),
    "tucker2": ("Tucker-2 (C/4, C/4)", {}),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(kind: str, channels: int) -> Tuple[torch.nn.Module, ConvSpec, str]:
    """The module, its spec and its registry kind for one candidate."""
    registry_kind = "acblock" if kind == "acblock_fused" else kind
    options = dict(CANDIDATES[kind][1])
    if kind == "tucker2":
        options["ranks"] = (max(1, channels // 4), max(1, channels // 4))
    spec = ConvSpec.create(channels, channels, 3, 1, "same", bias=False, **options)
    module = leanconv.create_conv2d(registry_kind, channels, channels, 3, 1, "same", bias=False, **options).eval()
    if kind == "acblock_fused":
        module = module.fuse().eval()
        registry_kind = "dense"  # deployed: one 3x3 conv
        spec = ConvSpec.create(channels, channels, 3, 1, "same", bias=True)
    return module, spec, registry_kind


def warm_up(channels: int, size: int, batch: int, seconds: float) -> None:
    """Run the dense baseline untimed first, so the first timed candidate pays no cold start."""
    module, _, _ = build("dense", channels)
    x = torch.randn(batch, channels, size, size)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        time_ms(module.to(memory_format=memory_format), x.contiguous(memory_format=memory_format), seconds)


def run(shapes: List[Tuple[int, int]], batches: List[int], kinds: List[str], min_run_time: float,
        progress) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    total = len(shapes) * len(batches) * len(kinds)
    task = progress.add_task("timing", total=total)
    for channels, size in shapes:
        for batch in batches:
            baseline: Dict[str, float] = {}
            base_macs = None
            warm_up(channels, size, batch, min_run_time)
            for kind in kinds:
                progress.update(task, description=f"{kind} {channels}@{size} b{batch}")
                try:
                    module, spec, registry_kind = build(kind, channels)
                except (ImportError, AttributeError, ValueError) as error:
                    progress.console.print(f"skipping {kind}: {error}")
                    progress.advance(task)
                    continue
                macs = get_kind(registry_kind).macs(spec, (size, size)) * batch
                params = sum(p.numel() for p in module.parameters())
                row: Dict[str, Any] = dict(kind=kind, label=CANDIDATES[kind][0], channels=channels, size=size,
                                           batch=batch, params=params, macs=macs)
                x = torch.randn(batch, channels, size, size)
                for fmt, memory_format in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
                    m = module.to(memory_format=memory_format)
                    row[f"latency_ms_{fmt}"] = time_ms(m, x.contiguous(memory_format=memory_format), min_run_time)
                if kind == "dense":
                    baseline = {fmt: row[f"latency_ms_{fmt}"] for fmt in ("nchw", "channels_last")}
                    base_macs = macs
                for fmt in ("nchw", "channels_last"):
                    row[f"speedup_{fmt}"] = baseline[fmt] / row[f"latency_ms_{fmt}"] if baseline else None
                row["mac_ratio"] = macs / base_macs if base_macs else None
                rows.append(row)
                progress.advance(task)
    return rows


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [
        "# Layer latency vs the dense 3x3 it replaces",
        "",
        f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, float32, inference mode, "
        f"median of `torch.utils.benchmark` adaptive runs ({meta['min_run_time']} s each), {meta['date']}.",
        "Speedup = dense latency / kind latency in the same memory format; "
        "efficiency = speedup x MAC ratio (1.0 = as fast as the MAC count promises).",
        "",
    ]
    groups: Dict[Tuple[int, int, int], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["channels"], row["size"], row["batch"]), []).append(row)
    for (channels, size, batch), group in groups.items():
        lines += [f"## {channels} channels @ {size}x{size}, batch {batch}", "",
                  "| kind | params | MACs | MAC ratio | NCHW ms | speedup | channels_last ms | speedup | efficiency (best) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            ratio = r["mac_ratio"]
            best = max(r["speedup_nchw"] or 0, r["speedup_channels_last"] or 0)
            lines.append(
                f"| {r['label']} | {r['params']:,} | {r['macs']:,} | {ratio:.3f} | {r['latency_ms_nchw']:.3f} | "
                f"{r['speedup_nchw']:.2f} | {r['latency_ms_channels_last']:.3f} | {r['speedup_channels_last']:.2f} | "
                f"{best * ratio:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    try:
        return [(int(c), int(s)) for c, s in (item.split("@") for item in text.split(","))]
    except ValueError:
        raise SystemExit(f"--shapes={text!r} must look like 64@112,128@56 (channels@size)")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="channels@size list (default %(default)s)")
    parser.add_argument("--batches", default="1,16", help="batch sizes (default %(default)s)")
    parser.add_argument("--kinds", default=",".join(CANDIDATES), help="candidates (default: all)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="one small shape, batch 1, short runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    parser.add_argument("--force", action="store_true", help="overwrite existing results")
    args = parser.parse_args(argv)

    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in CANDIDATES]
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; choose from {list(CANDIDATES)}")
    if "dense" not in kinds:
        kinds.insert(0, "dense")
    shapes = parse_shapes("32@28" if args.quick else args.shapes)
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    min_run_time = min(args.min_run_time, 0.05) if args.quick else args.min_run_time
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / "layers.json", out / "layers.md"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        print(f"refusing to overwrite {', '.join(existing)}: pass --force or choose another --out", file=sys.stderr)
        return 2

    from rich.progress import Progress

    torch.manual_seed(0)
    with Progress(transient=True) as progress:
        rows = run(shapes, batches, kinds, min_run_time, progress)
    meta = dict(cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
                date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                dtype="float32", device="cpu", min_run_time=min_run_time, python=platform.python_version())
    write_atomic(targets[0], json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = markdown(rows, meta)
    write_atomic(targets[1], text)
    print(text)
    print(f"wrote {targets[0]} and {targets[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
