"""Files given to the CLI (--weights, --calib, a converted folder's model.pt) are loaded with
``torch.load(weights_only=True)``: a pickle that would run code is refused, its code never runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def leanconv(*args, cwd):
    return subprocess.run([sys.executable, "-m", "leanconv.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("option", ["--weights", "--calib"])
def test_a_code_running_pickle_is_refused_and_never_runs(tmp_path, evil, option):
    path, marker = evil
    extra = ["--calib", "random:8"] if option == "--weights" else []
    run = leanconv("quantize", "digits_cnn", option, str(path), *extra, "--out", str(tmp_path / "q"), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert "Weights only load failed" in run.stderr
    assert not marker.exists() and not (tmp_path / "q").exists()


def test_convert_weights_refused_too(tmp_path, evil):
    path, marker = evil
    run = leanconv("convert", "digits_cnn", "--rank", "1", "--weights", str(path), "--out", str(tmp_path / "c"),
                   cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not marker.exists()


def test_no_plain_torch_load_left_in_the_package():
    source = Path(__file__).resolve().parents[1] / "src" / "leanconv"
    calls = [(p, line) for p in source.rglob("*.py") for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls
