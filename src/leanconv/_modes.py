"""Train/eval flags: put models in eval mode for a while and give every module its own flag back.

``model.train(was_training)`` restores one flag for the whole tree: a frozen BatchNorm inside a
model in training mode came back in train mode after a conversion or a profile. Every entry
point that needs eval mode uses :func:`evaluating`, which saves each module's flag and restores
it even when the work raises.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode inside the block; each of their modules' own flags restored after."""
    saved = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in saved:
            module.training = training


__all__ = ["evaluating"]
