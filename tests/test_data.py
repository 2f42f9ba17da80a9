"""Local data loaders: CIFAR-10 pickle batches and class folders, generated here, checked against
NumPy reads of the same arrays; ``load_data`` spec resolution and its errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from leanconv.data import CIFAR10, DataNotFoundError, ImageFolder, load_data
from leanconv.data.normalize import PRESETS

PIL = pytest.importorskip("PIL.Image")

NAMES = [f"class{i}" for i in range(10)]


def _write_cifar(folder, per_batch: int = 4, seed: int = 0) -> dict:
    """Write data_batch_1..5, test_batch and batches.meta with random pixels; return the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        arrays[name] = (data, labels)
        blob = pickle.dumps({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                             b"filenames": [b"x.png"] * per_batch}, protocol=2)
        # the real files were written by NumPy 1, which named the module numpy.core
        (folder / name).write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, handle)
    return arrays


def test_cifar10_pixels_and_labels_match_numpy(tmp_path):
    arrays = _write_cifar(tmp_path / "cifar-10-batches-py")
    train = CIFAR10(tmp_path, train=True, normalize=None)  # the parent folder works too
    test = CIFAR10(tmp_path / "cifar-10-batches-py", train=False, normalize=None)
    assert len(train) == 20 and len(test) == 4 and train.classes == NAMES
    data = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((arrays[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # row layout: 1024 red (row-major 32x32), then green, then blue
    for index in (0, 5, 19):
        image, label = train[index]
        row = data[index]
        expected = np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)]) / 255.0
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        np.testing.assert_allclose(image.numpy(), expected, rtol=0, atol=1e-7)
        assert label == labels[index]
        assert train.images[index, 1, 7, 9].item() == row[1024 + 7 * 32 + 9]
    x, y = test.tensors()
    np.testing.assert_allclose(x.numpy(), arrays["test_batch"][0].reshape(4, 3, 32, 32) / 255.0, atol=1e-7)
    assert y.tolist() == arrays["test_batch"][1]


def test_cifar10_normalization(tmp_path):
    arrays = _write_cifar(tmp_path)
    mean, std = np.array(PRESETS["cifar10"][0]), np.array(PRESETS["cifar10"][1])
    image, _ = CIFAR10(tmp_path, train=False)[2]  # default: CIFAR-10 channel statistics
    raw = arrays["test_batch"][0][2].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(image.numpy(), (raw - mean[:, None, None]) / std[:, None, None], rtol=1e-5, atol=1e-5)
    custom, _ = CIFAR10(tmp_path, train=False, normalize=((0.5, 0.5, 0.5), (0.25, 0.5, 1.0)))[2]
    np.testing.assert_allclose(custom.numpy(), (raw - 0.5) / np.array([0.25, 0.5, 1.0])[:, None, None], atol=1e-5)


def test_cifar10_missing_files_and_bad_content(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does not exist.*data_batch_1.*test_batch.*batches.meta"):
        CIFAR10(tmp_path / "nowhere")
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"is missing data_batch_3"):
        CIFAR10(tmp_path, train=True)
    assert len(CIFAR10(tmp_path, train=False)) == 4  # the test split needs only test_batch
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match=r"N x 3072 uint8"):
        CIFAR10(tmp_path, train=False)
    with open(tmp_path / "test_batch", "wb") as handle:  # a pickle that would run code is refused
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, handle)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print is not allowed"):
        CIFAR10(tmp_path, train=False)
    with pytest.raises(ValueError, match=r"normalize=\(\(0.5,\), \(1.0,\)\) must give 3 mean"):
        CIFAR10(tmp_path, normalize=((0.5,), (1.0,)))


def _write_folder(root, counts, size=(6, 5), seed=0, ext=".png") -> dict:
    """Class folders of random RGB images (H, W = size); returns {path: (array HxWx3, label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, (name, count) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            array = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            path = root / name / f"img{i}{ext}"
            PIL.fromarray(array).save(path)
            written[path] = (array, label)
    return written


def test_image_folder_pixels_labels_and_order(tmp_path):
    written = _write_folder(tmp_path, {"cat": 2, "ant": 3, "bee": 1})
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    data = ImageFolder(tmp_path)
    assert data.classes == ["ant", "bee", "cat"] and len(data) == 6 and data.sample_shape == (3, 6, 5)
    assert [p.parent.name for p, _ in data.samples] == ["ant"] * 3 + ["bee"] + ["cat"] * 2
    for index, (path, label) in enumerate(data.samples):
        image, got = data[index]
        array, expected_label = written[path]
        assert got == expected_label == ["ant", "bee", "cat"].index(path.parent.name)
        np.testing.assert_allclose(image.numpy(), array.transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-7)
    mean, std = np.array(PRESETS["imagenet"][0]), np.array(PRESETS["imagenet"][1])
    normalized, _ = ImageFolder(tmp_path, normalize="imagenet")[0]
    raw = written[data.samples[0][0]][0].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(normalized.numpy(), (raw - mean[:, None, None]) / std[:, None, None], atol=1e-5)


def test_image_folder_resize_grayscale_and_jpeg(tmp_path):
    for label, value in enumerate((40, 200)):  # constant images: any resize keeps the value
        (tmp_path / f"c{label}").mkdir()
        PIL.fromarray(np.full((7, 9, 3), value, np.uint8)).save(tmp_path / f"c{label}" / "a.jpg", quality=100)
    data = ImageFolder(tmp_path, size=(4, 12), mode="L")
    image, label = data[1]
    assert image.shape == (1, 4, 12) and label == 1
    assert torch.all((image * 255 - 200).abs() <= 1)  # JPEG of a flat gray image stays within 1 level
    assert ImageFolder(tmp_path, size=16)[0][0].shape == (3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does not exist; expected root/<class name>/<image>"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataNotFoundError, match="holds no images in class folders"):
        ImageFolder(tmp_path)
    _write_folder(tmp_path, {"a": 1})
    PIL.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "a" / "small.png")
    data = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match=r"small.png' is 3x3 .* first image is 5x6: pass size=\(H, W\)"):
        [data[i] for i in range(len(data))]
    with pytest.raises(ValueError, match=r"mode='CMYK' must be one of \('RGB', 'L'\)"):
        ImageFolder(tmp_path, mode="CMYK")
    with pytest.raises(ValueError, match=r"size=0 must be >= 1"):
        ImageFolder(tmp_path, size=0)
    with pytest.raises(ValueError, match=r"normalize='imagenet' must give 1 mean"):
        ImageFolder(tmp_path, mode="L", normalize="imagenet")


def test_load_data_forms(tmp_path):
    _write_cifar(tmp_path / "cifar")
    for spec in (f"cifar10:{tmp_path / 'cifar'}", str(tmp_path / "cifar")):
        splits = load_data(spec)
        assert splits.name == "cifar10" and len(splits.train) == 20 and len(splits.test) == 4
        assert splits.input_size(8) == (8, 3, 32, 32) and splits.num_classes == 10

    # a folder without train/val: split per class, deterministic, every class in both splits
    _write_folder(tmp_path / "flat", {"a": 5, "b": 4, "c": 2})
    splits = load_data(f"folder:{tmp_path / 'flat'}", test_fraction=0.25, seed=3)
    assert splits.name == "folder" and splits.classes == ["a", "b", "c"] and splits.sample_shape == (3, 6, 5)
    test_labels = sorted(label for _, label in splits.test.samples)
    assert test_labels == [0, 1, 2]  # round(0.25 * 5) = 1, round(0.25 * 4) = 1, 2 items -> 1
    assert len(splits.train) + len(splits.test) == 11
    train_paths = {p for p, _ in splits.train.samples}
    assert train_paths.isdisjoint(p for p, _ in splits.test.samples)
    again = load_data(str(tmp_path / "flat"), test_fraction=0.25, seed=3)  # autodetected as a folder
    assert again.test.samples == splits.test.samples

    # a folder with train/ and val/
    _write_folder(tmp_path / "split" / "train", {"x": 2, "y": 2}, size=(8, 8))
    _write_folder(tmp_path / "split" / "val", {"x": 1, "y": 1}, size=(8, 8), seed=1)
    splits = load_data(str(tmp_path / "split"), size=4)
    assert (len(splits.train), len(splits.test)) == (4, 2) and splits.sample_shape == (3, 4, 4)
    assert splits.train[0][0].shape == (3, 4, 4)


def test_load_data_digits_and_errors(tmp_path):
    pytest.importorskip("sklearn")
    digits = load_data("digits", size=16)
    x, y = digits.train[0]
    assert digits.sample_shape == (1, 16, 16) and x.shape == (1, 16, 16) and 0 <= int(y) < 10
    assert len(digits.train) + len(digits.test) == 1797
    with pytest.raises(DataNotFoundError, match=r"data='.*nope' is not an existing path; it must be 'digits'"):
        load_data(str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 folder .*nope2' does not exist"):
        load_data(f"cifar10:{tmp_path / 'nope2'}")
    with pytest.raises(ValueError, match=r"data='' must be 'digits'"):
        load_data("")
    with pytest.raises(ValueError, match=r"data='folder:' must name a folder"):
        load_data("folder:")
    with pytest.raises(ValueError, match=r"test_fraction=1.5 must be in \(0, 1\)"):
        load_data("digits", test_fraction=1.5)
    with pytest.raises(ValueError, match=r"normalize='imagenet' does not apply to digits"):
        load_data("digits", normalize="imagenet")
    _write_cifar(tmp_path / "c")
    with pytest.raises(ValueError, match=r"size=64 applies to digits and folder data"):
        load_data(str(tmp_path / "c"), size=64)
