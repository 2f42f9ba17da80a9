"""Every CLI user error (existing output without --force, missing file, bad number, missing
optional package) exits 2 with exactly one line on stderr and no traceback; a bug keeps its
traceback."""

from __future__ import annotations

import sys

import pytest

from leanconv._files import staged_folder
from leanconv.cli import main

NET = """
import torch, leanconv

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(leanconv.DepthwiseSeparableConv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model file, a quantized model, a converted folder, an existing leanconv folder and file."""
    import torch

    from leanconv.quant import quantize

    base = tmp_path_factory.mktemp("cli")
    (base / "net.py").write_text(NET)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    quantize(block, torch.randn(4, 3, 8, 8)).save(base / "q.pt")
    assert main(["convert", f"{base / 'net.py'}:build", "--rank", "1", "--input", "1,1,8,8",
                 "--out", str(base / "converted")]) == 0
    with staged_folder(base / "exists"):
        pass
    (base / "exists.txt").write_text("earlier")
    return base


def commands(base):
    net = f"{base / 'net.py'}:build"
    return {
        "convert": ["convert", net, "--rank", "1", "--input", "1,1,8,8"],
        "profile": ["profile", net, "--input", "1,1,8,8", "--format", "json"],
        "compare": ["compare", "--in-channels", "4", "--out-channels", "4", "--size", "8,8", "--format", "md"],
        "quantize": ["quantize", net, "--calib", "random:8", "--input", "1,1,8,8"],
        "export-hls": ["export-hls", str(base / "q.pt"), "--vectors", "1"],
        "optimize": ["optimize", net, "--data", "digits", "--rank", "1"],
        "demo": ["demo"],
        "bench": ["bench", net, "--input", "1,1,8,8", "--min-run-time", "0.001", "--settings", "eager"],
        "train": ["train", net, "--converted", str(base / "converted"), "--data", "digits", "--max-steps", "1"],
        "explain": ["explain", "dsconv", "--input", "1,4,8,8", "--out-channels", "8"],
    }


FILE_OUTPUTS = {"profile", "compare", "train"}

CASES = {
    "existing output": {
        command: ["--out", "{base}/exists" + (".txt" if command in FILE_OUTPUTS else "")]
        for command in ("convert", "profile", "compare", "quantize", "export-hls", "optimize", "demo", "train")
    },
    "missing file": {
        "convert": ["--weights", "{base}/missing.pt", "--out", "{base}/new"],
        "quantize": ["--calib", "{base}/missing.pt", "--out", "{base}/new"],
        "bench": ["--weights", "{base}/missing.pt"],
        "optimize": ["--weights", "{base}/missing.pt", "--out", "{base}/new"],
        "train": ["--weights", "{base}/missing.pt", "--out", "{base}/new.pt"],
        "export-hls": "export-hls {base}/missing-q.pt --out {base}/new",
        "profile": "profile {base}/missing.py:build --input 1,1,8,8",
    },
    "bad number": {
        "convert": ["--energy", "1.5", "--out", "{base}/new"],
        "quantize": ["--calib", "random:0", "--out", "{base}/new"],
        "export-hls": ["--vectors", "0", "--out", "{base}/new"],
        "bench": ["--batch-size", "0"],
        "compare": "compare --in-channels 0 --out-channels 4 --size 8,8",
        "explain": ["--option", "depth_multiplier=0"],
        "profile": "profile " + "{base}/net.py:build --input 1,1,8,8 --batch-size 0",
        "optimize": ["--mac-fraction", "2", "--out", "{base}/new"],
        "train": ["--epochs", "-1", "--out", "{base}/new.pt"],
    },
    "missing extra": {  # scikit-learn (the digits data) made unimportable
        "convert": ["--calib", "digits", "--out", "{base}/new"],
        "quantize": ["--calib", "digits", "--out", "{base}/new"],
        "optimize": ["--out", "{base}/new"],
        "demo": ["--out", "{base}/new"],
        "train": ["--out", "{base}/new.pt"],
    },
}
PARAMS = [(case, command) for case, table in CASES.items() for command in table]


def argv_for(case, command, base):
    extra = CASES[case][command]
    if isinstance(extra, str):
        return extra.format(base=base).split()
    argv = commands(base)[command]
    if case == "bad number" and command == "optimize":
        argv = [a for a in argv if a not in ("--rank", "1")]
    return argv + [a.format(base=base) for a in extra]


@pytest.mark.parametrize("case,command", PARAMS, ids=[f"{c}:{m}" for c, m in PARAMS])
def test_user_errors_are_one_line_and_exit_2(files, capsys, monkeypatch, case, command):
    if case == "missing extra":
        for name in ("sklearn", "sklearn.datasets"):
            monkeypatch.setitem(sys.modules, name, None)
    code = main(argv_for(case, command, files))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    # one error line, the last; progress notes (demo's "training the digits CNN...") may come before it
    errors = [line for line in lines if line.startswith(f"leanconv {command}: ") and "no --weights given" not in line]
    assert errors == lines[-1:], err
    expected = {"existing output": "exists; pass --force to replace it", "missing file": "missing",
                "bad number": "", "missing extra": "scikit-learn"}[case]
    assert expected in lines[-1], err
    assert sorted(p.name for p in files.iterdir() if p.name.startswith("new")) == []


def test_a_missing_extra_named_by_its_module_gets_the_extra(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)

    def plotting(args):
        import matplotlib.pyplot  # noqa: F401

    from leanconv.cli import run_command

    assert run_command(plotting, None, "leanconv x") == 2
    assert capsys.readouterr().err == ("leanconv x: needs the optional package 'matplotlib', which is not installed: "
                                       "pip install 'leanconv[plot]'\n")


def test_a_bug_keeps_its_traceback():
    from leanconv.cli import run_command

    def broken(args):
        return {}["no such key"]

    with pytest.raises(KeyError):
        run_command(broken, None, "leanconv x")


def test_to_is_checked_against_the_registry_at_run_time(files, capsys, monkeypatch):
    import leanconv.kinds

    real = leanconv.kinds.convertible_kinds()
    monkeypatch.setattr(leanconv.kinds, "convertible_kinds", lambda: [*real, "toy_kind"])
    code = main(commands(files)["convert"] + ["--to", "nosuch", "--out", str(files / "new")])
    assert code == 2
    assert capsys.readouterr().err == (f"leanconv convert: --to='nosuch' must be one of "
                                       f"{sorted([*real, 'toy_kind', 'auto'])}\n")
