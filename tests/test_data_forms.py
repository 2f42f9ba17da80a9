"""The one data vocabulary (leanconv.data.batches): every accepted form gives the same batches."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from leanconv.data.batches import input_batches, input_size_of

X = torch.arange(4 * 2 * 3 * 3, dtype=torch.float32).reshape(4, 2, 3, 3)
Y = torch.tensor([0, 1, 0, 1])


def _forms():
    return {
        "tensor": X,
        "list of batches": [X[:2], X[2:]],
        "generator": (b for b in (X[:2], X[2:])),
        "list of (x, y)": [(X[:2], Y[:2]), (X[2:], Y[2:])],
        "list of [x, y, extra]": [[X[:2], Y[:2], "id"], [X[2:], Y[2:], "id"]],
        "dicts": [{"image": X[:2], "label": Y[:2]}, {"image": X[2:], "label": Y[2:]}],
        "DataLoader of pairs": DataLoader(TensorDataset(X, Y), batch_size=2),
        "DataLoader of tensors": DataLoader(X, batch_size=2),
        "Dataset of samples": TensorDataset(X, Y),
        "list of samples": list(X),
    }


@pytest.mark.parametrize("form", list(_forms()))
def test_every_form_gives_the_same_inputs(form):
    batches = input_batches(_forms()[form], "calib", batch_size=2)
    assert torch.equal(torch.cat(batches), X)
    assert all(b.dim() == 4 for b in batches)


def test_named_dict_key_and_input_size():
    data = [{"pixels": X}]
    assert torch.equal(input_batches(data, key="pixels")[0], X)
    assert input_size_of(DataLoader(TensorDataset(X, Y), batch_size=3)) == (1, 2, 3, 3)


@pytest.mark.parametrize("data, words", [
    ("digits", "calib='digits' is not data"),
    (None, "calib=None is not data"),
    (3, "calib is a int"),
    ([], "holds no input batches"),
    ([X[0, 0]], "has shape (3, 3)"),
    ([X.long()], "dtype torch.int64"),
    ([X[:0]], "holds no values"),
    ([{"label": Y}], "under one of"),
    ([("a", "b")], "item 0 is a tuple"),
    ([X.clone().fill_(float("nan"))], "batch 0 holds NaN"),
    ([X[0], X], "not both"),
])
def test_bad_data_is_one_line_naming_the_argument(data, words):
    with pytest.raises(ValueError) as error:
        input_batches(data, "calib")
    message = str(error.value)
    assert words in message and "\n" not in message and message.startswith("calib")


def test_channel_count_is_checked():
    with pytest.raises(ValueError, match="calib: batch 0 has 2 channels, the model takes 3"):
        input_batches(X, "calib", channels=3)
