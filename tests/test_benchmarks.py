"""The layer benchmark script runs, writes its tables atomically and refuses to overwrite."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "layers.py"
ALL_KINDS = ["dense", "grouped", "depthwise", "dsconv", "asymmetric", "asym_parallel", "acblock",
             "acblock_fused", "tucker2"]


def _cells(table: str, label: str) -> list:
    rows = [line for line in table.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, f"expected one {label!r} row in:\n{table}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_layers_benchmark_quick(tmp_path):
    args = [sys.executable, str(SCRIPT), "--quick", "--min-run-time", "0.005", "--out", str(tmp_path)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    data = json.loads((tmp_path / "layers.json").read_text())
    meta = data["meta"]
    assert meta["threads"] >= 1 and meta["dtype"] == "float32" and meta["batches"] == [1]
    assert meta["memory_formats"] == ["nchw", "channels_last"] and meta["torch"] and meta["cpu"]

    # one row per kind that built, in the requested order; the rest are listed as skipped
    skipped = {s["kind"] for s in data["skipped"]}
    assert "dense" not in skipped
    assert [row["kind"] for row in data["rows"]] == [k for k in ALL_KINDS if k not in skipped]
    rows = {row["kind"]: row for row in data["rows"]}
    dense = rows["dense"]
    assert dense["speedup_nchw"] == 1.0 and dense["speedup_channels_last"] == 1.0 and dense["mac_ratio"] == 1.0
    assert dense["macs"] == 32 * 32 * 9 * 28 * 28 and dense["params"] == 32 * 32 * 9  # quick: 32@28, batch 1
    for row in data["rows"]:
        assert row["latency_ms_nchw"] > 0 and row["latency_ms_channels_last"] > 0
        assert abs(row["speedup_nchw"] - dense["latency_ms_nchw"] / row["latency_ms_nchw"]) < 1e-9
    if "dsconv" in rows:  # depthwise separable 3x3, C -> C: MAC ratio 1/C + 1/9
        assert abs(rows["dsconv"]["mac_ratio"] - (1 / 32 + 1 / 9)) < 1e-12
    if "grouped" in rows:  # default groups=4
        assert rows["grouped"]["mac_ratio"] == 0.25
    if "acblock_fused" in rows:
        assert rows["acblock_fused"]["macs"] == dense["macs"]

    table = (tmp_path / "layers.md").read_text()
    assert "| kind | params | MACs | MAC ratio vs dense | latency NCHW ms | speedup NCHW |" in table
    cells = _cells(table, "dense 3x3")
    assert cells[3] == "1.000" and cells[5] == "1.00" and cells[7] == "1.00"

    before = {name: (tmp_path / name).read_bytes() for name in ("layers.json", "layers.md")}
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr and "--force" in again.stderr
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layers.json", "layers.md"]  # no temp files left


def test_convert_speed_benchmark_quick(tmp_path):
    """The conversion-time benchmark runs in its smoke mode and writes one row per kind and request."""
    script = SCRIPT.parent / "convert_speed.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    data = json.loads((tmp_path / "convert_speed.json").read_text())
    assert data["meta"]["threads"] >= 1 and data["meta"]["cpu"] and len(data["rows"]) == 4 * 4
    assert data["refit"]["converted"] >= 1 and "| kind | request | seconds |" in (tmp_path / "convert_speed.md").read_text()


def test_targets_benchmark_quick(tmp_path):
    """The targets benchmark runs in its smoke mode: every row checked, the fastest marked, the honest speedup said."""
    script = SCRIPT.parent / "targets.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--pairs", "digits", "--targets", "torch,torch-frozen",
                          "--precisions", "fp32", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    data = json.loads((tmp_path / "targets.json").read_text())
    rows = data["results"][0]["report"]["rows"]
    assert {(r["model"], r["target"]) for r in rows} >= {("dense", "torch"), ("lean", "torch-frozen")}
    assert all(r["status"] == "ok" and r["difference"] is None or r["difference"] < 1e-3 for r in rows)
    text = (tmp_path / "targets.md").read_text()
    assert "speedup vs dense at its best" in text and "**fastest**" in text and data["meta"]["cpu"]


def test_where_is_it_fast_quotes_the_committed_targets_results():
    """docs/deploy_targets.md quotes every pair's summary line from benchmarks/results/targets.json verbatim."""
    root = SCRIPT.parent.parent
    data = json.loads((root / "benchmarks" / "results" / "targets.json").read_text())
    page = " ".join((root / "docs" / "deploy_targets.md").read_text().split())
    assert data["results"], "targets.json holds no results"
    for result in data["results"]:
        assert " ".join(result["summary"].split()) in page, f"docs/deploy_targets.md should quote: {result['summary']}"


def test_where_is_it_fast_table_and_ranges_follow_the_committed_results():
    """The gains table and the ranges quoted in the prose, recomputed from targets.json."""
    root = SCRIPT.parent.parent
    data = json.loads((root / "benchmarks" / "results" / "targets.json").read_text())
    page = (root / "docs" / "deploy_targets.md").read_text()
    gains = {"dense": [], "lean": []}
    for result in data["results"]:
        report = result["report"]
        median = {(r["model"], r["target"], r["precision"]): r["latency"]["median"] for r in report["rows"]
                  if r["latency"]}

        def best(model):
            return min(v for (m, t, _), v in median.items() if m == model and t != "fp32 eager (as written)")

        base = {m: median[(m, "onnxruntime", "fp32")] for m in ("dense", "lean")}
        for model in gains:
            gains[model].append(base[model] / best(model))
        row = (f"| {result['pair']}, batch {result['batch']} | {report['macs']['dense'] / report['macs']['lean']:.2f}x "
               f"| {base['dense'] / base['lean']:.2f}x | {gains['dense'][-1]:.2f}x | {gains['lean'][-1]:.2f}x |")
        assert row in page, row
    for model in gains:
        span = f"{min(gains[model]):.1f}-{max(gains[model]):.1f}x"
        assert span in page, f"the prose should say {span} for the {model} models"


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("openvino", "nncf")),
                    reason="openvino/nncf not installed")
def test_openvino_timing_build_benchmark_quick(tmp_path):
    """The OpenVINO int8 timing-build benchmark runs in its smoke mode: every candidate built both
    ways and compiled to the same program, the whole model left to NNCF."""
    script = SCRIPT.parent / "openvino_timing_build.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    data = json.loads((tmp_path / "openvino_timing_build.json").read_text())
    assert data["candidates"] and all(row["same_program"] and row["ran"] == "int8" for row in data["candidates"])
    assert [row["model"] for row in data["whole_models"]] == ["digits CNN"]
    assert "NNCF PTQ" in data["whole_models"][0]["note"]
    assert "| quick/NNCF |" in (tmp_path / "openvino_timing_build.md").read_text()
