"""Per-channel normalization shared by the image loaders: named presets or an explicit pair.

A loader scales pixels to [0, 1] first; ``normalize`` then maps each channel ``c`` to
``(x - mean[c]) / std[c]``. ``None`` keeps [0, 1].
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

#: Named (mean, std) presets. ``imagenet``: the statistics ImageNet-pretrained models expect;
#: ``cifar10``: the CIFAR-10 training set's per-channel statistics (pixels in [0, 1]).
PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

NormalizeArg = Union[None, str, Tuple[Sequence[float], Sequence[float]]]


def resolve_normalize(normalize: NormalizeArg, channels: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(mean, std)`` tensors shaped ``(channels, 1, 1)``, or None for no normalization.

    Raises ValueError for an unknown preset, a length that is not ``channels`` (a 1-channel
    image takes one value; a 3-value preset on 1 channel is refused) or a std <= 0.
    """
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize not in PRESETS:
            raise ValueError(f"normalize={normalize!r} must be None, one of {tuple(PRESETS)} or a (mean, std) pair")
        mean, std = PRESETS[normalize]
    else:
        try:
            mean, std = normalize
            mean, std = [float(v) for v in mean], [float(v) for v in std]
        except (TypeError, ValueError):
            raise ValueError(f"normalize={normalize!r} must be None, one of {tuple(PRESETS)} "
                             "or a (mean, std) pair of per-channel sequences") from None
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalize={normalize!r} must give {channels} mean and {channels} std values "
                         f"(one per channel), got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"normalize={normalize!r}: every std must be > 0")
    shape = (channels, 1, 1)
    return torch.tensor(mean, dtype=torch.float32).view(shape), torch.tensor(std, dtype=torch.float32).view(shape)


def apply_normalize(pixels: torch.Tensor, stats: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``pixels`` (uint8, ``(..., C, H, W)``) as float32 in [0, 1], then normalized by ``stats``."""
    x = pixels.to(torch.float32) / 255.0
    if stats is None:
        return x
    mean, std = stats
    return (x - mean) / std


__all__ = ["NormalizeArg", "PRESETS", "apply_normalize", "resolve_normalize"]
