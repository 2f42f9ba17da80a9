"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upsampled to 32x32.

Ships inside scikit-learn, so nothing is downloaded. The split is deterministic: a fixed
permutation (``seed``), the first ``train_fraction`` for training, the rest for testing.
Pixels are scaled to [0, 1] then standardized with the training set's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DigitsSplit:
    """Tensors ``(N, 1, size, size)`` float32 and ``(N,)`` int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits(size: int = 32, train_fraction: float = 0.8, seed: int = 0) -> DigitsSplit:
    """Load, upsample (bilinear) to ``size x size``, split and standardize the digits."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data ships with scikit-learn: pip install 'leanconv[data]'") from error
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction={train_fraction!r} must be in (0, 1)")
    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    cut = int(round(train_fraction * len(labels)))
    mean, std = images[:cut].mean(), images[:cut].std()
    images = (images - mean) / std
    return DigitsSplit(images[:cut], labels[:cut], images[cut:], labels[cut:])
