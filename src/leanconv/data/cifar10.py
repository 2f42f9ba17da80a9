"""CIFAR-10 from the python pickle batches in a local folder (nothing is downloaded).

The folder is the one the official ``cifar-10-python.tar.gz`` extracts to
(``cifar-10-batches-py/``, or its parent): ``data_batch_1`` .. ``data_batch_5`` (training),
``test_batch`` and ``batches.meta``. Each batch is a pickled dict with ``b'data'``, an
``N x 3072`` uint8 array (per row the 1024 red, then green, then blue pixels of a 32x32 image,
row-major: i.e. ``C x H x W``), and ``b'labels'``, N ints in 0..9; ``batches.meta`` holds
``b'label_names'``.

The pickles are read with an unpickler that only accepts plain containers and NumPy arrays,
so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from leanconv.data.errors import DataNotFoundError
from leanconv.data.normalize import NormalizeArg, apply_normalize, resolve_normalize

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
SUBFOLDER = "cifar-10-batches-py"

# (module, name) globals a CIFAR pickle may reference: NumPy's array reconstruction, under
# its NumPy 1 and NumPy 2 module names, and the bytes constructor of Python 3 protocol-2 pickles.
_NUMPY_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and NumPy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if module.startswith("numpy.core"):  # NumPy 2 keeps these under numpy._core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        content = _ArrayUnpickler(handle, encoding="bytes").load()
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a pickled dict, got {type(content).__name__}")
    return content


def cifar10_folder(root: Union[str, Path]) -> Path:
    """The folder holding the batches: ``root`` itself or ``root/cifar-10-batches-py``."""
    root = Path(root)
    for candidate in (root, root / SUBFOLDER):
        if (candidate / META_FILE).is_file() or (candidate / TEST_FILES[0]).is_file():
            return candidate
    return root


def is_cifar10_folder(root: Union[str, Path]) -> bool:
    """True when ``root`` (or ``root/cifar-10-batches-py``) holds CIFAR-10 python batches."""
    folder = cifar10_folder(root)
    return (folder / META_FILE).is_file() and any((folder / f).is_file() for f in TRAIN_FILES + TEST_FILES)


def _read_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    content = _read_pickle(path)
    if b"data" not in content or b"labels" not in content:
        raise ValueError(f"{path} must hold the keys b'data' and b'labels', got {sorted(content)}")
    data, labels = np.asarray(content[b"data"]), np.asarray(content[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be an N x 3072 uint8 array, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: b'labels' must hold {data.shape[0]} labels (one per row), got {labels.shape}")
    return data, labels


class CIFAR10(Dataset):
    """CIFAR-10 ``train`` (50,000 images) or test (10,000) split from local pickle batches.

    Items are ``(image, label)``: a float32 ``(3, 32, 32)`` tensor, pixels scaled to [0, 1] then
    normalized per channel (``normalize``: ``'cifar10'`` (default, the training set's
    statistics), ``'imagenet'``, a ``(mean, std)`` pair, or None for [0, 1]), and an int.
    ``images`` (uint8, ``(N, 3, 32, 32)``), ``labels`` (int64) and ``classes`` hold the raw data;
    ``tensors()`` gives the whole split normalized at once.
    """

    def __init__(self, root: Union[str, Path], train: bool = True, normalize: NormalizeArg = "cifar10") -> None:
        self.stats = resolve_normalize(normalize, 3)
        folder = cifar10_folder(root)
        files = TRAIN_FILES if train else TEST_FILES
        missing = [name for name in (*files, META_FILE) if not (folder / name).is_file()]
        if missing:
            problem = "does not exist" if not Path(root).is_dir() else f"is missing {', '.join(missing)}"
            raise DataNotFoundError(
                f"CIFAR-10 folder {str(root)!r} {problem}: it must hold the python batches "
                f"{', '.join(TRAIN_FILES)}, {TEST_FILES[0]} and {META_FILE} (as extracted from cifar-10-python.tar.gz, "
                f"directly or in {SUBFOLDER}/); leanconv downloads nothing")
        meta = _read_pickle(folder / META_FILE)
        names = meta.get(b"label_names")
        if not isinstance(names, (list, tuple)) or not names:
            raise ValueError(f"{folder / META_FILE} must hold b'label_names', a list of class names")
        self.classes: List[str] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        parts = [_read_batch(folder / name) for name in files]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"CIFAR-10 labels in {folder} must be in [0, {len(self.classes)}), "
                             f"got {labels.min()}..{labels.max()}")
        self.root = folder
        self.train = train
        self.images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return apply_normalize(self.images[index], self.stats), int(self.labels[index])

    def tensors(self, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` (default all) images normalized, ``(N, 3, 32, 32)``, and labels."""
        end = len(self) if limit is None else limit
        return apply_normalize(self.images[:end], self.stats), self.labels[:end]


__all__ = ["CIFAR10", "cifar10_folder", "is_cifar10_folder"]
