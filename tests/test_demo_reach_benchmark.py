"""benchmarks/demo_reach.py's floor model and tables (no timing, no search: the benchmark itself is
run by hand, see benchmarks/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.support import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "demo_reach.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "demo_reach_benchmark")


def test_the_floor_is_the_stem_pooled_into_the_classifier_and_the_original_is_unchanged(bench):
    from leanconv.models import digits_cnn

    torch.manual_seed(0)
    original = digits_cnn().eval()
    for module in original.modules():  # BN with non-trivial statistics, so folding it wrongly would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    floor = bench.floor_model(original)
    x = torch.randn(3, 1, 32, 32)
    stem, bn = original.features.conv1.conv, original.features.conv1.norm
    h = F.conv2d(x, stem.weight, stem.bias, padding=1)
    h = (h - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    h = torch.relu(h * bn.weight[:, None, None] + bn.bias[:, None, None])
    expected = h.mean((2, 3)) @ original.fc.weight[:, :32].T + original.fc.bias
    with torch.no_grad():
        assert torch.allclose(floor(x), expected, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in floor.modules()) == 1


def test_the_table_reads_the_bound_and_each_fastest_mix(bench):
    best = {"original": {"target": "onnxruntime", "precision": "int8", "ms": 0.1},
            "floor": {"target": "onnxruntime", "precision": "fp32", "ms": 0.025},
            "fastest mix (onnxruntime)": {"target": "onnxruntime", "precision": "fp32", "ms": 0.05}}
    run = {"batch": 1, "goal": 3.0, "best": best, "bound": {"median": 4.0, "low": 3.9, "high": 4.1},
           "reached": {"fastest mix (onnxruntime)": {"median": 2.0, "low": 1.9, "high": 2.1}},
           "searches": {"onnxruntime": {"mix": "dsconv m=1 x3", "headline": "REQUEST NOT MET ..."}}, "report": ""}
    meta = {"date": "2026-11-30", "torch": "2", "cpu_count": 2, "rounds": 5, "loadavg_start": [1.0],
            "loadavg_end": [1.0], "command": "python benchmarks/demo_reach.py"}
    text = "\n".join(bench.markdown(meta, [run]))
    assert ("| 1 | 3x | 0.100 ms (onnxruntime int8) | 0.025 ms (onnxruntime fp32) | 4.00x (3.90-4.10) | "
            "fastest mix (onnxruntime): 0.050 ms (onnxruntime fp32) | 2.00x (1.90-2.10) |") in text
    assert "- search on onnxruntime: dsconv m=1 x3; REQUEST NOT MET" in text
