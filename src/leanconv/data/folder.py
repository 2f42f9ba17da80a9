"""Images in class folders (``root/<class name>/*.png|jpg|jpeg``), the ImageFolder layout.

Classes are the sub-folder names sorted, labelled 0, 1, ...; images are read with Pillow (the
``data`` extra), converted to RGB (or grayscale with ``mode='L'``), optionally resized, scaled
to [0, 1] and normalized per channel. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from leanconv._validate import check_choice, check_positive_pair
from leanconv.data.errors import DataNotFoundError
from leanconv.data.normalize import NormalizeArg, apply_normalize, resolve_normalize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MODES = {"RGB": 3, "L": 1}
_LAYOUT = "root/<class name>/<image>.png|.jpg|.jpeg (one sub-folder per class)"


def _pillow():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("reading image folders needs Pillow: pip install 'leanconv[data]'") from error
    return Image


def scan_class_folders(root: Union[str, Path]) -> Tuple[List[str], List[Tuple[Path, int]]]:
    """``(classes, samples)``: sorted class folder names and ``(image path, label)`` pairs,
    sorted by class then file name. Hidden folders and non-image files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist; expected {_LAYOUT}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise DataNotFoundError(f"image folder {str(root)!r} holds no images in class folders; expected {_LAYOUT}")
    return classes, samples


class ImageFolder(Dataset):
    """Labelled images from class folders. Items: ``(float32 (C, H, W) tensor, label)``.

    ``size``: resize every image to ``(H, W)`` (an int means square) with bilinear filtering;
    without it all images must share one size. ``mode``: ``'RGB'`` (3 channels) or ``'L'``
    (1 channel). ``normalize``: None (default, [0, 1]), ``'imagenet'``, ``'cifar10'`` or a
    ``(mean, std)`` pair with one value per channel. ``samples`` restricts the dataset to
    given ``(path, label)`` pairs (``load_data`` uses it for a train/test split).
    """

    def __init__(
        self,
        root: Union[str, Path],
        size: Optional[Union[int, Sequence[int]]] = None,
        mode: str = "RGB",
        normalize: NormalizeArg = None,
        samples: Optional[Sequence[Tuple[Path, int]]] = None,
    ) -> None:
        check_choice(mode, "mode", tuple(MODES))
        self.size = check_positive_pair(size, "size") if size is not None else None
        self.mode = mode
        self.stats = resolve_normalize(normalize, MODES[mode])
        self.root = Path(root)
        self.classes, found = scan_class_folders(root)
        self.samples: List[Tuple[Path, int]] = list(found if samples is None else samples)
        if not self.samples:
            raise ValueError(f"samples=[] must hold at least one (path, label) pair from {str(root)!r}")
        first = self._read(self.samples[0][0])
        self.sample_shape: Tuple[int, int, int] = tuple(first.shape)  # (C, H, W)

    def _read(self, path: Path) -> torch.Tensor:
        image = _pillow().open(path)
        try:
            image = image.convert(self.mode)
            if self.size is not None and image.size != (self.size[1], self.size[0]):
                image = image.resize((self.size[1], self.size[0]), _pillow().Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
        finally:
            image.close()
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        pixels = self._read(path)
        if tuple(pixels.shape) != self.sample_shape:
            raise ValueError(f"image {str(path)!r} is {pixels.shape[2]}x{pixels.shape[1]} (W x H) but the first image is "
                             f"{self.sample_shape[2]}x{self.sample_shape[1]}: pass size=(H, W) to resize every image")
        return apply_normalize(pixels, self.stats), label


__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "scan_class_folders"]
