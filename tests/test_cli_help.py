"""``leanconv --help`` and every ``leanconv CMD --help`` import no torch (the command imports what
it needs only when it runs); tables on a pipe are not cut to 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from leanconv.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # every registered subcommand

PROBE = """
import sys
from leanconv.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    assert done.code == 0, done.code
heavy = sorted(m for m in ("torch", "numpy", "rich", "leanconv.kinds", "leanconv.models") if m in sys.modules)
print("IMPORTED=" + ",".join(heavy), file=sys.stderr)
"""


def test_every_command_is_listed():
    assert {"kinds", "profile", "explain", "compare", "convert", "bench", "quantize", "export-hls", "optimize",
            "demo", "train"} <= set(COMMANDS)


@pytest.mark.parametrize("argv", [["--help"]] + [[command, "--help"] for command in COMMANDS], ids=" ".join)
def test_help_imports_no_torch(argv):
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: leanconv" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "IMPORTED=", done.stderr


def test_installed_command_help_runs():
    script = os.path.join(os.path.dirname(sys.executable), "leanconv")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and all(command in done.stdout for command in COMMANDS)


def test_tables_on_a_pipe_are_full_width():
    done = subprocess.run([sys.executable, "-m", "leanconv.cli", "kinds"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) > 80  # a pipe gets every column in full
    assert "…" not in done.stdout


def test_kinds_csv_and_json_agree():
    import csv
    import io

    run = lambda fmt: subprocess.run([sys.executable, "-m", "leanconv.cli", "kinds", "--format", fmt],  # noqa: E731
                                     capture_output=True, text=True, timeout=300, check=True).stdout
    as_json = json.loads(run("json"))
    as_csv = list(csv.DictReader(io.StringIO(run("csv"))))
    assert as_csv == as_json and len(as_json) >= 8


def test_python_m_leanconv_train_still_works_with_a_deprecation_note():
    done = subprocess.run([sys.executable, "-m", "leanconv.train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: leanconv train")
    assert done.stderr.strip().splitlines() == [
        "leanconv: `python -m leanconv.train` is deprecated; use `leanconv train` (under torchrun: `-m leanconv.cli train`)"]
