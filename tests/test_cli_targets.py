"""The CLI's deployment-target and device options: bench --targets/--precisions, --device on
convert/optimize/demo/bench, convert --convert-stem; every bad value one line with exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from leanconv.cli import main

NET = """
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    base = tmp_path_factory.mktemp("targets")
    (base / "net.py").write_text(NET)
    return f"{base / 'net.py'}:build", base


def _one_line_error(capsys, args, words):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and words in err, err


def test_bench_on_targets_marks_the_fastest_and_checks_outputs(net, capsys):
    model, base = net
    assert main(["convert", model, "--rank", "1", "--convert-stem", "--input", "1,1,8,8", "--device", "cpu",
                 "--out", str(base / "conv")]) == 0
    plan = json.loads((base / "conv" / "plan.json").read_text())
    assert "0" in plan["layers"]  # --convert-stem converted the first conv too
    capsys.readouterr()
    assert main(["bench", model, "--input", "2,1,8,8", "--targets", "torch,torch-frozen", "--precisions", "fp32",
                 "--converted", str(base / "conv"), "--min-run-time", "0.005", "--rounds", "2",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["model"], r["target"]) for r in rows} >= {("original", "torch"), ("converted", "torch-frozen")}
    assert all(r["status"] == "ok" for r in rows)
    assert all(r["difference"] < 1e-4 for r in rows if r["difference"] is not None)


@pytest.mark.parametrize("args, words", [
    (["--targets", "bogus"], "--targets='bogus' must be one of"),
    (["--targets", "torch", "--precisions", "int4"], "--precisions='int4' must be one of"),
    (["--targets", "onnxruntime", "--precisions", "bf16"], "target 'onnxruntime' has none of precisions=['bf16']"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
])
def test_bench_target_options_refuse_bad_values(net, capsys, args, words):
    _one_line_error(capsys, ["bench", net[0], "--input", "1,1,8,8", "--min-run-time", "0.005", *args], words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("command", [["bench", "--input", "1,1,8,8"], ["convert", "--rank", "1"],
                                     ["optimize", "--data", "digits", "--rank", "1"], ["demo"]])
def test_device_cuda_without_cuda_is_one_line(net, capsys, tmp_path, command):
    args = [command[0]] + ([net[0]] if command[0] != "demo" else []) + command[1:] + ["--device", "cuda"]
    if command[0] != "bench":
        args += ["--out", str(tmp_path / "out")]
    _one_line_error(capsys, args, "--device cuda: CUDA is not available on this machine")
    assert not (tmp_path / "out").exists()
