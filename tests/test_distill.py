"""Distillation: the loss against a NumPy reference, a single-process run (teacher untouched,
student trained, first-step loss recomputed by hand), the errors, and a 2-process torchrun
(gloo) run whose ranks end with identical weights."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import leanconv
from leanconv import save_plan
from leanconv.models.digits import digits_cnn
from leanconv.train import DEFAULT_ALPHA, distill, distill_loss


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (3.0, 1.0)])
def test_distill_loss_matches_numpy(temperature, alpha):
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 5)) * 3
    y = rng.integers(0, 5, size=7)
    log_ps, log_pt = _np_log_softmax(s / temperature), _np_log_softmax(t / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean()  # KL(teacher || student) per sample
    ce = -_np_log_softmax(s)[np.arange(7), y].mean()
    parts = distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature, alpha)
    assert parts.soft.item() == pytest.approx(kl * temperature ** 2, rel=1e-12)
    assert parts.hard.item() == pytest.approx(ce, rel=1e-12)
    assert parts.total.item() == pytest.approx(alpha * kl * temperature ** 2 + (1 - alpha) * ce, rel=1e-12)


def test_one_default_alpha_for_distill_distill_loss_and_optimize():
    defaults = {f.__name__: inspect.signature(f).parameters["alpha"].default
                for f in (distill, distill_loss, leanconv.optimize)}
    assert defaults == dict.fromkeys(defaults, DEFAULT_ALPHA) and 0 < DEFAULT_ALPHA < 1


def test_distill_loss_errors():
    s, t = torch.zeros(2, 3), torch.zeros(2, 3)
    assert distill_loss(s, t, None, 2.0, 1.0).hard.item() == 0.0  # unlabelled data: soft term only
    with pytest.raises(ValueError, match=r"alpha=0.5 weighs a hard-label loss but the data has no labels"):
        distill_loss(s, t, None, 2.0, 0.5)
    with pytest.raises(ValueError, match=r"temperature=0 must be a finite number > 0"):
        distill_loss(s, t, torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        distill_loss(s, t, None, 1.0, 1.5)
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\)"):
        distill_loss(s, torch.zeros(2, 4))


def _teacher_student(width: int = 8):
    torch.manual_seed(0)
    teacher = digits_cnn(width=width).eval()
    with torch.no_grad():  # random but non-trivial BN statistics
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        teacher.fc.weight.mul_(20)  # confident, informative logits
    student = leanconv.convert(teacher, to="dsconv", rank=1, exclude=["features.conv1*"]).model
    with torch.no_grad():  # start the student away from the teacher
        student.fc.weight.normal_(0, 0.5)
    return teacher, student


def _data(teacher, n: int = 64):
    x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = teacher(x).argmax(1)  # labels the teacher agrees with, so both terms pull the same way
    return TensorDataset(x, y)


def test_distill_trains_student_in_place_and_leaves_teacher_alone():
    teacher, student = _teacher_student()
    data = _data(teacher, n=48)
    teacher.train()  # its mode is restored afterwards
    before_teacher = copy.deepcopy(teacher.state_dict())
    before_student = copy.deepcopy(student.state_dict())
    result = distill(student, teacher, data, epochs=4, lr=1e-2, batch_size=16, progress=False, alpha=0.9,
                     feature_paths=["features.conv2.conv", "features.conv4"], feature_weight=0.5)
    assert teacher.training and all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())
    assert not student.training
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before_student[k])]
    assert "fc.weight" in changed and "features.conv2.conv.depthwise.weight" in changed
    assert result.steps == 4 * 3 and len(result.step_losses) == 12 and len(result.epochs) == 4
    assert all(e.samples == 48 and e.steps == 3 for e in result.epochs)
    assert result.epochs[-1].loss < result.epochs[0].loss and result.epochs[-1].soft < result.epochs[0].soft
    hooks = [m for model in (student, teacher) for m in model.modules() if m._forward_hooks]
    assert hooks == []  # the feature hooks are gone
    assert "| 4 |" in result.to_markdown() and json.dumps(result.to_dict())
    assert distill(student, teacher, data, epochs=3, batch_size=16, max_steps=4, progress=False).steps == 4


def test_first_step_loss_equals_hand_computation():
    """One full batch, no shuffling: the first recorded loss is the closed form on the initial
    weights (student in train mode, teacher in eval mode), feature MSE included."""
    teacher, student = _teacher_student()
    data = _data(teacher, n=24)
    x, y = data.tensors
    temperature, alpha, weight = 3.0, 0.7, 0.25
    reference_student = copy.deepcopy(student).train()
    feats = {}
    paths = ["features.conv2.conv", "features.conv3"]
    for name, model in (("s", reference_student), ("t", teacher)):
        for p in paths:
            model.get_submodule(p).register_forward_hook(
                lambda mod, args, out, key=(name, p): feats.__setitem__(key, out.detach().numpy().astype(np.float64)))
    with torch.no_grad():
        s = reference_student(x).double().numpy()
        t = teacher.eval()(x).double().numpy()
    log_ps, log_pt = _np_log_softmax(s / temperature), _np_log_softmax(t / temperature)
    soft = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean() * temperature ** 2
    hard = -_np_log_softmax(s)[np.arange(len(y)), y.numpy()].mean()
    mse = np.mean([((feats[("s", p)] - feats[("t", p)]) ** 2).mean() for p in paths])
    expected = alpha * soft + (1 - alpha) * hard + weight * mse
    loader = DataLoader(data, batch_size=24, shuffle=False)
    result = distill(student, teacher, loader, epochs=1, lr=1e-3, temperature=temperature, alpha=alpha,
                     feature_paths=paths, feature_weight=weight, progress=False)
    assert result.steps == 1
    assert result.step_losses[0] == pytest.approx(expected, rel=1e-5)
    assert result.epochs[0].hard == pytest.approx(hard, rel=1e-5)
    assert result.epochs[0].feature == pytest.approx(mse, rel=1e-5)


def test_distill_errors():
    teacher, student = _teacher_student()
    data = _data(teacher, n=8)
    with pytest.raises(ValueError, match="student and teacher are the same module"):
        distill(teacher, teacher, data)
    with pytest.raises(ValueError, match=r"student shares .* parameter tensor\(s\) with the teacher"):
        distill(torch.nn.Sequential(teacher), teacher, data)
    with pytest.raises(ValueError, match=r"feature_paths entry 'features.nope' is not a module of the student"):
        distill(student, teacher, data, feature_paths=["features.nope"])
    with pytest.raises(ValueError, match=r"feature_paths='features' must be a list"):
        distill(student, teacher, data, feature_paths="features")
    with pytest.raises(ValueError, match=r"epochs=0 must be >= 1"):
        distill(student, teacher, data, epochs=0)
    with pytest.raises(ValueError, match=r"lr=-1 must be a number > 0"):
        distill(student, teacher, data, lr=-1)
    with pytest.raises(ValueError, match=r"data: item 0 is a int; expected an \(N, C, H, W\) tensor"):
        distill(student, teacher, [1, 2])
    with pytest.raises(ValueError, match=r"data='digits' is not training data"):
        distill(student, teacher, "digits")
    with pytest.raises(ValueError, match=r"data is empty"):
        distill(student, teacher, TensorDataset(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long)))
    unlabelled = TensorDataset(data.tensors[0])
    with pytest.raises(ValueError, match=r"data: batch 0 has no labels, but alpha=0.5 weighs a hard-label loss"):
        distill(student, teacher, unlabelled, progress=False)  # TensorDataset of one tensor yields 1-tuples
    bare = DataLoader(data.tensors[0], batch_size=4)
    with pytest.raises(ValueError, match=r"alpha=0.9 weighs a hard-label loss"):
        distill(student, teacher, bare, alpha=0.9, progress=False)
    with pytest.raises(ValueError, match=rf"alpha={DEFAULT_ALPHA} weighs a hard-label loss"):
        distill(student, teacher, bare, progress=False)  # the default too
    assert distill(student, teacher, bare, alpha=1.0, progress=False).steps == 2
    narrow = digits_cnn(width=4)  # same logits, different feature shapes
    with pytest.raises(ValueError, match=r"'features.conv2': student output \(4, 4, 8, 8\) and teacher output "
                                         r"\(4, 8, 8, 8\) must have the same shape"):
        distill(narrow, teacher, data, batch_size=4, feature_paths=["features.conv2"], progress=False)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    pytest.importorskip("sklearn")
    teacher = digits_cnn().eval()
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    converted = leanconv.convert(teacher, to="dsconv", rank=1, exclude=["features.conv1*"])
    (tmp_path / "conv").mkdir()
    torch.save(converted.model.state_dict(), tmp_path / "conv" / "model.pt")
    save_plan(converted.plan, tmp_path / "conv" / "plan.json")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "leanconv.train", "digits_cnn", "--weights", str(tmp_path / "teacher.pt"),
               "--converted", str(tmp_path / "conv"), "--data", "digits", "--size", "16", "--max-steps", "4",
               "--batch-size", "8", "--lr", "0.01", "--features", "--out", str(tmp_path / "out.pt"),
               "--history", str(tmp_path / "history.json"), "--rank-dir", str(tmp_path / "ranks"), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt") for r in (0, 1)]
    initial = converted.model.state_dict()
    assert ranks[0].keys() == ranks[1].keys() == initial.keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert not torch.equal(ranks[0]["fc.weight"], initial["fc.weight"])
    assert not torch.equal(ranks[0]["features.conv3.conv.pointwise.weight"], initial["features.conv3.conv.pointwise.weight"])
    written = torch.load(tmp_path / "out.pt")
    assert all(torch.equal(written[k], ranks[0][k]) for k in written)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["world_size"] == 2 and history["steps"] == 4
    assert history["epochs"][0]["samples"] == 2 * 4 * 8  # both ranks' samples
    assert history["feature_paths"] == list(converted.plan.layers)
    assert "Distillation: 4 steps" in done.stdout
    # the distilled weights load into the plan's architecture
    student = leanconv.apply_plan(digits_cnn(), converted.plan)
    student.load_state_dict(written)

    single = [sys.executable, "-m", "leanconv.train", *command[command.index("leanconv.train") + 1:]]
    again = subprocess.run(single, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 2 and "exists; pass --force to replace it" in again.stderr
