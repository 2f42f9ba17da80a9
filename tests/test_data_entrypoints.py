"""One data vocabulary at every entry point: quantize(calib=...), distill(data=...) and
optimize(data=...) give the same result for equivalent forms of the same data, and one clear
line for anything else; distill and optimize run on the model's device unless told otherwise."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import leanconv
import leanconv.optimization as optimization
from leanconv.data import DataSplits, as_splits
from leanconv.models.digits import digits_cnn
from leanconv.optimization import calibration_batches, evaluate
from leanconv.quant import quantize
from leanconv.train import distill
from leanconv.train.distillation import _device_for

# ------------------------------------------------------------------------------------ quantize

CX = torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(0))
CY = torch.arange(24) % 4


def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


CALIB_FORMS = {
    "tensor": lambda: CX,
    "list of batches": lambda: [CX[:10], CX[10:]],
    "generator of batches": lambda: (b for b in CX.split(7)),
    "DataLoader of (x, y)": lambda: DataLoader(TensorDataset(CX, CY), batch_size=8),
    "list of [x, y, id]": lambda: [[CX[:12], CY[:12], "a"], [CX[12:], CY[12:], "b"]],
    "dicts": lambda: [{"image": CX[:5], "label": CY[:5]}, {"image": CX[5:], "label": CY[5:]}],
    "Dataset of samples": lambda: TensorDataset(CX, CY),
}


def _quantized(calib) -> tuple:
    q = quantize(_chain(), calib, "apfixed", observer="minmax")
    return [layer.in_q for layer in q.layers] + [q.output_q], q(CX[:4])


@pytest.mark.parametrize("form", [f for f in CALIB_FORMS if f != "tensor"])
def test_quantize_gives_the_same_scales_for_every_form(form):
    scales, out = _quantized(CALIB_FORMS["tensor"]())
    other_scales, other_out = _quantized(CALIB_FORMS[form]())
    assert other_scales == scales and torch.equal(other_out, out)
    # the input scale is the closed form: symmetric int8 over the data's largest magnitude
    assert other_scales[0].scale == pytest.approx(float(CX.abs().max()) / 127, rel=1e-12)


def test_quantize_takes_a_training_model_as_its_eval_copy_and_leaves_its_flag():
    model = _chain()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    expected = quantize(model, CX)(CX[:4])
    model.train()
    assert torch.equal(quantize(model, CX)(CX[:4]), expected) and model.training


@pytest.mark.parametrize("calib, words", [
    (CX[:, :2], "calib: batch 0 has 2 channels, the model takes 3"),
    ([CX[:4], CX[4:].clone().index_fill_(0, torch.tensor([1]), float("nan"))], "calib: batch 1 holds NaN or inf"),
    (torch.zeros(4, 3, 6, 6), "calib: every input value is 0"),
    ("digits", "calib='digits' is not data"),
    ([CX[:4], CX[4:, :, :5]], "calib: batch 1 has shape (20, 3, 5, 6); every batch must be (N, 3, 6, 6)"),
    (DataLoader(TensorDataset((CX * 255).to(torch.uint8)), batch_size=8), "calib: batch 0 has dtype torch.uint8"),
    ([{"pixels": CX}], "calib: item 0 is a dict with keys ['pixels']"),
])
def test_quantize_refuses_bad_calibration_data_in_one_line(calib, words):
    with pytest.raises(ValueError) as error:
        quantize(_chain(), calib)
    assert words in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------- distill

X = torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _pair(width: int = 4):
    torch.manual_seed(0)
    teacher = digits_cnn(width=width).eval()
    student = leanconv.convert(teacher, to="dsconv", rank=1, exclude=["features.conv1*"]).model
    return teacher, student


def _labels(teacher: nn.Module, inputs: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return teacher(inputs).argmax(1)


def _distilled(data, **kwargs):
    teacher, student = _pair()
    result = distill(student, teacher, data, epochs=1, lr=1e-2, batch_size=16, progress=False, **kwargs)
    return student.state_dict(), result


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6) for k in a)


def test_distill_samples_forms_are_shuffled_alike():
    """A Dataset of (x, y) and a list of (x, y) samples: the same seeded shuffle, the same weights."""
    y = _labels(_pair()[0])
    reference, _ = _distilled(TensorDataset(X, y))
    weights, result = _distilled([(X[i], y[i]) for i in range(len(X))])
    assert _same_weights(weights, reference) and result.steps == 3


def test_distill_batch_forms_are_used_in_order():
    """A DataLoader of pairs (no shuffle), a list of (x, y) batches, a generator of dict batches."""
    y = _labels(_pair()[0])
    reference, first = _distilled(DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False))
    for form in ([(X[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)],
                 ({"image": X[i:i + 16], "label": y[i:i + 16]} for i in range(0, 48, 16))):
        weights, result = _distilled(form)
        assert _same_weights(weights, reference) and result.step_losses == pytest.approx(first.step_losses)


def test_distill_reads_dict_labels_for_the_hard_loss():
    """alpha=0: the first step's loss is the cross-entropy of the student's logits and the dict's labels."""
    teacher, student = _pair()
    y = torch.arange(16) % 10
    with torch.no_grad():
        expected = F.cross_entropy(copy.deepcopy(student).train()(X[:16]), y).item()
    result = distill(student, teacher, [{"x": X[:16], "target": y}], epochs=1, alpha=0.0, progress=False)
    assert result.step_losses[0] == pytest.approx(expected, rel=1e-5)


def test_distill_without_labels_needs_alpha_one():
    reference, _ = _distilled(X, alpha=1.0)
    weights, _ = _distilled(TensorDataset(X), alpha=1.0)
    assert _same_weights(weights, reference)
    teacher, student = _pair()
    with pytest.raises(ValueError, match=r"^data: batch 0 has no labels, but alpha=0.5 weighs a hard-label loss"):
        distill(student, teacher, [X[:8]], progress=False)
    for data, words in [(3, "data is a int"), (None, "data=None is not training data"), ([], "data is empty"),
                        (X.long(), "data: batch 0 has dtype torch.int64"),
                        ([X[0, 0]], "data: item 0 has shape (16, 16); an input must be a sample")]:
        with pytest.raises(ValueError, match="^" + words.replace("(", r"\(").replace(")", r"\)")):
            distill(student, teacher, data, alpha=1.0, progress=False)


def test_distill_follows_the_students_device(monkeypatch):
    teacher, student = _pair()
    assert _device_for(student, None) == torch.device("cpu")
    assert _device_for(student, "cuda:1") == torch.device("cuda", 1)  # asked for: taken as given
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _device_for(student, None) is None  # torchrun: setup gives each process its own GPU if any
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match=r"device='tpu9' is not a torch device"):
        distill(student, teacher, X, alpha=1.0, device="tpu9", progress=False)
    with pytest.raises(ValueError, match=r"device='meta' holds no values"):
        distill(student, teacher, X, alpha=1.0, device="meta", progress=False)
    with torch.device("meta"):
        ghost = digits_cnn(width=4)
    with pytest.raises(ValueError, match=r"student has weights on the meta device"):
        distill(ghost, teacher, X, alpha=1.0, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_distill_trains_a_cuda_student_on_its_device():
    teacher, student = _pair()
    before = copy.deepcopy(teacher.state_dict())
    student.cuda()
    distill(student, teacher, X, alpha=1.0, max_steps=2, progress=False)
    assert all(p.device.type == "cuda" for p in student.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # the CPU teacher untouched


# ------------------------------------------------------------------------------------ optimize

VX = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def no_timing(monkeypatch):
    """optimize without its latency measurements (benchmarks, not data handling); records distill's device."""
    seen = {}

    def recording_distill(*args, **kwargs):
        seen["device"] = kwargs.get("device")
        return distill(*args, **kwargs)

    monkeypatch.setattr(optimization, "_deployed", lambda model, size, min_run_time: (1.0, "eager"))
    monkeypatch.setattr(optimization, "_measure_efficiency", lambda *args: {})
    monkeypatch.setattr(optimization, "layer_latency", lambda *args: {})
    monkeypatch.setattr(optimization, "distill", recording_distill)
    return seen


def _optimized(data, **kwargs):
    teacher = _pair()[0]
    result = leanconv.optimize(teacher, data, rank=1, epochs=1, sweep=False, calib_images=16, batch_sizes=(1,),
                               progress=False, **kwargs)
    return result.model.state_dict(), (result.original.accuracy, result.chosen.accuracy, result.distilled_accuracy)


def test_optimize_takes_splits_pairs_and_dicts_alike(no_timing):
    teacher = _pair()[0]
    train, val = TensorDataset(X, _labels(teacher)), TensorDataset(VX, _labels(teacher, VX))
    reference, numbers = _optimized(DataSplits("custom", "tensors", train, val, [], (1, 16, 16)), device="cpu")
    assert no_timing["device"] == torch.device("cpu")
    for form in ((train, val), {"train": train, "val": val}):
        no_timing.clear()
        weights, other = _optimized(form)
        assert _same_weights(weights, reference) and other == numbers
        assert no_timing["device"] == torch.device("cpu")  # the default: the model's device


def test_optimize_takes_dataloaders_and_lists_of_batches_alike(no_timing):
    teacher = _pair()[0]
    y, vy = _labels(teacher), _labels(teacher, VX)
    loaders = (DataLoader(TensorDataset(X, y), batch_size=16), DataLoader(TensorDataset(VX, vy), batch_size=16))
    batches = ([(X[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)], [(VX, vy)])
    reference, numbers = _optimized(loaders)
    weights, other = _optimized(batches)
    assert _same_weights(weights, reference) and other == numbers
    assert numbers[0] == 1.0  # the labels are the teacher's own predictions


@pytest.mark.parametrize("data, words", [
    (3, "data is a int; expected a DataSplits"),
    ((X, torch.zeros(48)), "data['train'] is a Tensor"),
    ({"train": [(X, X)]}, "it must have 'train' and one of ['val', 'validation', 'test']"),
    (((b for b in [X]), [X]), "data['train'] is a generator that can be read only once"),
    (([(X, torch.zeros(48))], [(VX[:, :, :8], torch.zeros(32))]), "data['val'] inputs are (1, 8, 16)"),
])
def test_optimize_refuses_other_data_in_one_line(data, words):
    with pytest.raises(ValueError) as error:
        leanconv.optimize(digits_cnn(width=4), data, rank=1, progress=False)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_optimize_device_is_checked_first():
    data = (TensorDataset(X, torch.zeros(48, dtype=torch.long)),) * 2
    with pytest.raises(ValueError, match=r"^device='nowhere' is not a torch device"):
        leanconv.optimize(digits_cnn(width=4), data, rank=1, device="nowhere", progress=False)
    with pytest.raises(ValueError, match=r"^device is 'meta'"):
        leanconv.optimize(digits_cnn(width=4), data, rank=1, device="meta", progress=False)


def test_a_data_string_is_load_data():
    pytest.importorskip("sklearn")
    splits = as_splits("digits")
    assert splits.name == "digits" and splits.input_size(1) == (1, 1, 32, 32)


def test_evaluate_and_calibration_read_every_labelled_form():
    teacher = _pair()[0]
    labels = torch.arange(32) % 10
    with torch.no_grad():
        expected = float((teacher(VX).argmax(1) == labels).float().mean())  # the reference: one forward
    for data in (TensorDataset(VX, labels), DataLoader(TensorDataset(VX, labels), batch_size=5),
                 [{"image": VX[:20], "label": labels[:20]}, {"image": VX[20:], "label": labels[20:]}],
                 [(VX[i], int(labels[i])) for i in range(32)]):
        assert evaluate(teacher, data, batch_size=7) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"^data: batch 0 has no labels; accuracy needs"):
        evaluate(teacher, VX)
    first = calibration_batches(DataLoader(TensorDataset(VX, labels), batch_size=5), 12, batch_size=8)
    assert [len(b) for b in first] == [8, 4] and torch.equal(torch.cat(first), VX[:12])
