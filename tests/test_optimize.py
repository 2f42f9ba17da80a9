"""``leanconv optimize`` end to end on a tiny model and generated class folders; the choice rule;
refusal to overwrite; interrupted writes leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import leanconv
from leanconv._files import staged_folder
from leanconv.optimization import (ModelStats, Trial, _choose, _convert_options, calibration_batches, evaluate,
                                   stem_paths)

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

MODEL_FILE = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
'''


def write_classes(root, per_class=12, size=12):
    """Two classes a CNN can tell apart: bright top half vs bright bottom half, with noise."""
    generator = torch.Generator().manual_seed(0)
    for label, name in enumerate(("bottom", "top")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = torch.rand(size, size, 3, generator=generator) * 80
            half = slice(0, size // 2) if label else slice(size // 2, size)
            image[half] += 150
            PIL.fromarray(image.clamp(0, 255).to(torch.uint8).numpy()).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("optimize")
    (root / "net.py").write_text(MODEL_FILE)
    write_classes(root / "images")
    return root


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "leanconv.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_optimize_cli_end_to_end_and_refuses_to_overwrite(workspace):
    args = ["optimize", "net.py:build", "--data", "folder:images", "--rank", "1", "--epochs", "1",
            "--batch-size", "2", "--no-sweep", "--calib-images", "8", "--measure-time", "0.02",
            "--out", "out"]
    first = run(args, workspace)
    assert first.returncode == 0, first.stderr[-3000:]
    out = workspace / "out"
    assert sorted(p.name for p in out.iterdir()) == [".leanconv-output", "candidates.png", "layers.png", "model.pt", "plan.json",
                                                      "report.md", "summary.json"]
    report = (out / "report.md").read_text()
    for section in ("| test accuracy |", "## Candidates tried", "## Per layer", "## Distillation",
                    "## Deployment, batch 2", "realized efficiency", "![candidates](candidates.png)"):
        assert section in report, section
    summary = json.loads((out / "summary.json").read_text())
    # the stem (3 input channels) stays dense; the two 3x3 convs after it become rank-1 separable
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(plan["layers"]) == ["3", "6"]
    sys.path.insert(0, str(workspace))
    try:
        from net import build
    finally:
        sys.path.remove(str(workspace))
    rebuilt = leanconv.apply_plan(build(), out / "plan.json")
    rebuilt.load_state_dict(torch.load(out / "model.pt"), strict=True)
    data = leanconv.data.load_data(f"folder:{workspace / 'images'}")
    assert evaluate(rebuilt, data.test) == pytest.approx(summary["distilled_accuracy"])
    assert isinstance(rebuilt[3], leanconv.DepthwiseSeparableConv2d) and rebuilt[3].depth_multiplier == 1
    assert summary["chosen"]["macs"] == leanconv.profile(rebuilt, (1, 3, 12, 12)).total_macs
    assert PIL.open(out / "candidates.png").size[0] > 300

    stamp = (out / "report.md").stat().st_mtime_ns
    again = run(args, workspace)
    assert again.returncode != 0 and "pass --force" in again.stderr
    assert (out / "report.md").stat().st_mtime_ns == stamp
    assert not [p for p in workspace.iterdir() if p.name.startswith(".out")]


def test_staged_folder_leaves_nothing_when_interrupted(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out) as staging:
            (staging / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with staged_folder(out) as staging:  # an earlier leanconv output (only such folders are replaced)
        (staging / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="pass --force"):
        with staged_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with staged_folder(out, force=True) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("failed half way")
    assert [p.name for p in tmp_path.iterdir()] == ["result"] and (out / "old.txt").read_text() == "old"
    with staged_folder(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [".leanconv-output", "new.txt"]


def candidate(label, accuracy, latency):
    return Trial(label, {}, 1, 1, accuracy, latency, "eager", 1)


def test_target_speedup_picks_the_most_accurate_candidate_fast_enough():
    original = ModelStats(0.99, 10, 100, 10.0, "eager")
    candidates = [candidate("a", 0.97, 4.0), candidate("b", 0.95, 2.0), candidate("c", 0.90, 6.0)]
    notes = []
    assert _choose(candidates, original, 2.0, notes).label == "a" and not notes  # 2.5x and most accurate
    assert _choose(candidates, original, 4.0, notes).label == "b"
    assert _choose(candidates, original, 9.0, notes).label == "b" and "no candidate reached" in notes[0]
    assert _choose(candidates, original, None, []).label == "a"  # rank / budget: the one asked for, first


def test_helpers_and_bad_arguments():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    assert stem_paths(model, 3) == ["0"] and stem_paths(model, 1) == []
    data = torch.utils.data.TensorDataset(torch.arange(10.0).reshape(10, 1, 1, 1), torch.zeros(10, dtype=torch.long))
    batches = calibration_batches(data, 6, batch_size=4)
    assert [len(b) for b in batches] == [4, 2] and len(set(torch.cat(batches).flatten().tolist())) == 6
    splits = leanconv.data.load_data("digits")
    for kwargs, match in [({}, "exactly one of"), ({"rank": 1, "mac_fraction": 0.5}, "exactly one of"),
                          ({"mac_fraction": 1.5}, "mac_fraction=1.5 must be a fraction"),
                          ({"mac_fraction": "0.3"}, "mac_fraction='0.3' must be a fraction"),
                          ({"target_speedup": -1.0}, "target_speedup=-1.0 must be"),
                          ({"rank": 0}, "rank=0 must be >= 1"), ({"rank": 1, "epochs": -1}, "epochs=-1"),
                          ({"rank": 1, "lr": 0.0}, "lr=0.0 must be a finite number > 0"),
                          ({"rank": 1, "alpha": 2.0}, r"alpha=2.0 must be in \[0, 1\]"),
                          ({"rank": 1, "calib_images": 0}, "calib_images=0 must be >= 1"),
                          ({"rank": 1, "batch_sizes": "16"}, r"batch_sizes='16' must be a sequence of ints"),
                          ({"rank": 1, "batch_sizes": (), "out": "never"}, r"batch_sizes=\(\) measures no batch size"),
                          ({"rank": 1, "to": "bogus"}, r"to='bogus' must be one of \[.*'dsconv'"),
                          ({"rank": 1, "device": "nowhere"}, "device='nowhere' is not a torch device")]:
        with pytest.raises(ValueError, match=match):
            leanconv.optimize(leanconv.models.create("digits_cnn"), splits, **kwargs)


def test_mac_fraction_becomes_convert_mac_budget_a_count():
    original = ModelStats(0.99, 10, 1000, 10.0, "eager")
    assert _convert_options({"mac_fraction": 0.25}, original, None) == {"mac_budget": 250}
    assert _convert_options({"rank": 2}, original, None) == {"rank": 2}
