"""``load_data(spec)``: a ``--data`` string to train and test datasets.

Forms: ``digits`` (scikit-learn's bundled digits, 32x32), ``cifar10:PATH`` (CIFAR-10 python
batches), ``folder:PATH`` (class folders) or a bare ``PATH``, recognized as CIFAR-10 when it
holds the batches and as class folders otherwise.

:func:`as_splits` takes what :func:`leanconv.optimize` accepts as ``data``: a
:class:`DataSplits`, such a string, a ``(train, val)`` pair or a ``{"train": ..., "val": ...}``
dict of DataLoaders or datasets (any form of :mod:`leanconv.data.batches` that can be read
more than once), the input size inferred from the first training batch.

A class-folder root with ``train/`` and ``val/`` (or ``test/``) sub-folders, each holding class
folders, gives those splits; any other root is split per class, deterministically
(``test_fraction`` of each class, chosen by a seeded permutation, goes to test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset, TensorDataset

from leanconv.data.batches import input_size_of
from leanconv.data.cifar10 import CIFAR10, is_cifar10_folder
from leanconv.data.errors import DataNotFoundError
from leanconv.data.folder import ImageFolder, scan_class_folders
from leanconv.data.digits import load_digits

FORMS = "'digits', 'cifar10:PATH', 'folder:PATH' or a PATH to a CIFAR-10 or class-folder directory"
_DEFAULT: Any = "default"


@dataclass
class DataSplits:
    """Train and test data of ``(image, label)`` items, with what describes them."""

    name: str  #: 'digits', 'cifar10', 'folder', or 'custom' (from :func:`as_splits`)
    source: str  #: where the data came from (a path, 'scikit-learn', or the types given)
    train: Any  #: a Dataset, or (from :func:`as_splits`) any re-readable data form
    test: Any  #: the same, for validation/testing
    classes: List[str]  #: class names; empty when not known (:func:`as_splits`)
    sample_shape: Tuple[int, int, int]  #: (C, H, W) of one image

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def input_size(self, batch: int = 1) -> Tuple[int, int, int, int]:
        """``(batch, C, H, W)``, the shape profiling and conversion take."""
        return (batch, *self.sample_shape)


def _split_dirs(root: Path) -> Optional[Tuple[Path, Path]]:
    """``(train, test)`` when ``root`` holds ``train/`` and ``val/`` or ``test/`` class trees."""
    train = root / "train"
    for name in ("val", "test"):
        test = root / name
        if train.is_dir() and test.is_dir() and any(p.is_dir() for p in train.iterdir()):
            return train, test
    return None


def stratified_split(labels: Sequence[int], test_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices ``(train, test)``: per class, ``round(test_fraction * n)`` (at least 1 when the
    class has 2 or more items) chosen by a seeded permutation go to test."""
    generator = torch.Generator().manual_seed(seed)
    train: List[int] = []
    test: List[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
        count = min(max(round(test_fraction * len(members)), 1 if len(members) > 1 else 0), len(members) - 1)
        test += order[:count]
        train += order[count:]
    return sorted(train), sorted(test)


def _folder(path: Path, size, normalize, mode: str, test_fraction: float, seed: int) -> DataSplits:
    options = dict(size=size, mode=mode, normalize=None if normalize is _DEFAULT else normalize)
    dirs = _split_dirs(path)
    if dirs is not None:
        train, test = ImageFolder(dirs[0], **options), ImageFolder(dirs[1], **options)
        if test.classes != train.classes:
            raise ValueError(f"{dirs[1]} has classes {test.classes} but {dirs[0]} has {train.classes}: "
                             "both splits must hold the same class folders")
        return DataSplits("folder", str(path), train, test, train.classes, train.sample_shape)
    classes, samples = scan_class_folders(path)
    train_idx, test_idx = stratified_split([label for _, label in samples], test_fraction, seed)
    if not test_idx:
        raise ValueError(f"folder {str(path)!r} has too few images to split off a test set "
                         f"(test_fraction={test_fraction}); put at least 2 images in a class")
    train = ImageFolder(path, samples=[samples[i] for i in train_idx], **options)
    test = ImageFolder(path, samples=[samples[i] for i in test_idx], **options)
    return DataSplits("folder", str(path), train, test, classes, train.sample_shape)


def load_data(
    spec: str,
    *,
    size: Optional[Union[int, Sequence[int]]] = None,
    normalize: Any = _DEFAULT,
    mode: str = "RGB",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplits:
    """Resolve a ``--data`` string (see the module docstring) to train and test datasets.

    ``size``: image size (digits: side, default 32; folders: resize to it). ``normalize``:
    each loader's default (digits: standardized by the training set; CIFAR-10: its channel
    statistics; folders: [0, 1]) or a preset / ``(mean, std)`` (CIFAR-10 and folders).
    ``mode``: 'RGB' or 'L' for folders. ``test_fraction``/``seed``: the split of a folder
    without ``train/``/``val/``. Nothing is downloaded: a missing path raises
    :class:`~leanconv.data.errors.DataNotFoundError` saying what was expected there.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"data={spec!r} must be {FORMS}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode={mode!r} must be 'RGB' or 'L'")
    kind, sep, rest = spec.partition(":")
    if spec == "digits":
        return _digits(size, normalize)
    if sep and kind in ("cifar10", "folder"):
        if not rest:
            raise ValueError(f"data={spec!r} must name a folder after '{kind}:'")
        path = Path(rest).expanduser()
    else:
        kind, path = "auto", Path(spec).expanduser()
        if not path.exists():
            raise DataNotFoundError(f"data={spec!r} is not an existing path; it must be {FORMS}")
    if kind == "auto":
        kind = "cifar10" if is_cifar10_folder(path) else "folder"
    if kind == "cifar10":
        if size is not None:
            raise ValueError(f"size={size!r} applies to digits and folder data; CIFAR-10 images are 32x32")
        stats = "cifar10" if normalize is _DEFAULT else normalize
        train, test = CIFAR10(path, train=True, normalize=stats), CIFAR10(path, train=False, normalize=stats)
        return DataSplits("cifar10", str(path), train, test, train.classes, (3, 32, 32))
    return _folder(path, size, normalize, mode, test_fraction, seed)


def _digits(size, normalize) -> DataSplits:
    if normalize is not _DEFAULT:
        raise ValueError(f"normalize={normalize!r} does not apply to digits (standardized by its training set)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size={size!r} must be a positive int (the side of the square digits images)")
    split = load_digits(size=size or 32)
    side = split.train_x.shape[-1]
    return DataSplits("digits", "scikit-learn", TensorDataset(split.train_x, split.train_y),
                      TensorDataset(split.test_x, split.test_y), [str(d) for d in range(10)], (1, side, side))


SPLITS_FORMS = ("a DataSplits (leanconv.data.load_data), a --data string such as 'digits', a (train, val) pair or "
                "a dict {'train': ..., 'val': ...} of DataLoaders or datasets of (input, label) items")
_VAL_KEYS = ("val", "validation", "test")


def _reusable(part: Any, name: str) -> Any:
    """``part`` if it can be read more than once (a DataLoader, a dataset, a list); else one clear error."""
    if isinstance(part, (str, bytes)) or part is None or isinstance(part, torch.Tensor):
        raise ValueError(f"{name} is a {type(part).__name__}; expected a DataLoader or a dataset of (input, label) "
                         "items (wrap tensors as TensorDataset(x, y))")
    try:
        one_shot = iter(part) is part
    except TypeError:
        one_shot = not (hasattr(part, "__len__") and hasattr(part, "__getitem__"))
    if one_shot:
        raise ValueError(f"{name} is a {type(part).__name__} that can be read only once; pass a DataLoader, a dataset "
                         "or a list (it is read several times)")
    return part


def _parts(data: Any, name: str) -> Tuple[Any, Any]:
    """``(train, val)`` of a pair or a dict."""
    if isinstance(data, dict):
        unknown = sorted(map(str, set(data) - {"train", *_VAL_KEYS}))
        val_keys = [k for k in _VAL_KEYS if k in data]
        if unknown or "train" not in data or len(val_keys) != 1:
            raise ValueError(f"{name} is a dict with keys {sorted(map(str, data))}; it must have 'train' and one of "
                             f"{list(_VAL_KEYS)}, nothing else")
        return data["train"], data[val_keys[0]]
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data
    raise ValueError(f"{name} is a {type(data).__name__}; expected {SPLITS_FORMS}")


def as_splits(data: Any, name: str = "data") -> DataSplits:
    """``data`` as :class:`DataSplits` (see the module docstring); ``sample_shape`` from the first
    training batch, the validation data checked to have the same."""
    if isinstance(data, DataSplits):
        return data
    if isinstance(data, str):
        return load_data(data)
    train, val = _parts(data, name)
    train, val = _reusable(train, f"{name}['train']"), _reusable(val, f"{name}['val']")
    shape = input_size_of(train, f"{name}['train']")[1:]
    val_shape = input_size_of(val, f"{name}['val']")[1:]
    if val_shape != shape:
        raise ValueError(f"{name}['val'] inputs are {val_shape} (C, H, W) but {name}['train'] inputs are {shape}: "
                         "both must have the same shape")
    return DataSplits("custom", f"{type(train).__name__} / {type(val).__name__}", train, val, [], shape)


__all__ = ["DataSplits", "FORMS", "SPLITS_FORMS", "as_splits", "load_data", "stratified_split"]
