"""The layer benchmark script runs, writes its tables atomically and refuses to overwrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "layers.py"


def test_layers_benchmark_quick(tmp_path):
    args = [sys.executable, str(SCRIPT), "--quick", "--kinds", "dense,dsconv,acblock_fused", "--out", str(tmp_path)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    data = json.loads((tmp_path / "layers.json").read_text())
    assert [row["kind"] for row in data["rows"]] == ["dense", "dsconv", "acblock_fused"]
    dense, dsconv, fused = data["rows"]
    assert dense["speedup_nchw"] == 1.0 and dense["mac_ratio"] == 1.0
    # MAC ratio of a depthwise separable 3x3, C -> C: 1/C + 1/9 (C = 32 in the quick run)
    assert abs(dsconv["mac_ratio"] - (1 / 32 + 1 / 9)) < 1e-12
    assert fused["macs"] == dense["macs"]
    table = (tmp_path / "layers.md").read_text()
    assert "| dense 3x3 |" in table and "| 1.00 |" in table
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert json.loads((tmp_path / "layers.json").read_text()) == data
