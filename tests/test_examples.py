"""Every seed example runs as a script and prints what it demonstrates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("s*_*.py"))


def test_every_seed_row_has_an_example():
    rows = {name.split("_")[0] for name in SCRIPTS}
    # S7 (Keras MEAN_Spot + CBAM) is examples/keras_mean_spot_cbam.py, run by test_keras_example.py
    assert rows == {"s1", "s2", "s3", "s4", "s5", "s6", "s8", "s9", "s10", "s11"}
    assert (EXAMPLES / "keras_mean_spot_cbam.py").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script):
    result = subprocess.run([sys.executable, script], cwd=EXAMPLES, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "total" in result.stdout or "->" in result.stdout
