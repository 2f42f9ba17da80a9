"""``leanconv demo``: :func:`leanconv.optimization.optimize` on the embedded default.

The digits CNN (:mod:`leanconv.models.digits`) trained on scikit-learn's bundled digits
(upsampled to 32x32; nothing is downloaded), converted to rank-1 depthwise separable convs
(the one-channel stem stays dense), refit on 256 calibration images, distilled for a few
epochs, deployed in its fastest setting and measured at batch 1 and 16. The trained original
is cached in the user cache folder (:func:`leanconv._cache.cache_dir`), so only the first run
trains it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from leanconv._cache import cache_dir
from leanconv._files import atomic_file, check_new_folder
from leanconv.data import load_data, load_digits
from leanconv.models.digits import digits_cnn, train_digits_cnn
from leanconv.optimization import optimize

TRAIN_EPOCHS = 8
SEED = 0


def trained_digits_cnn(progress: bool = True) -> torch.nn.Module:
    """The digits CNN trained for ``TRAIN_EPOCHS`` epochs, from the cache or trained now (~10-30 s)."""
    path = cache_dir() / f"digits_cnn-e{TRAIN_EPOCHS}-s{SEED}-torch{torch.__version__}.pt"
    model = digits_cnn()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, ValueError):  # a damaged or stale cache file: train again
            pass
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"[bold cyan]leanconv[/bold cyan] training the digits CNN for {TRAIN_EPOCHS} "
                                   f"epochs (first run only; cached in {path.parent})")
    model = train_digits_cnn(load_digits(), epochs=TRAIN_EPOCHS, seed=SEED)
    with atomic_file(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()


def run_demo(out: Optional[Union[str, Path]] = "leanconv-demo", force: bool = False, epochs: int = 3,
             batch_sizes=(1, 16), progress: bool = True, min_run_time: float = 0.2):
    """Run the demo; returns the :class:`leanconv.optimization.OptimizeResult` (written to ``out``)."""
    if out is not None:
        check_new_folder(out, force)  # refuse before training anything
    model = trained_digits_cnn(progress)
    return optimize(model, load_data("digits"), to="dsconv", rank=1, epochs=epochs, lr=3e-3, alpha=0.5,
                    batch_sizes=batch_sizes,
                    out=out, force=force, progress=progress, min_run_time=min_run_time,
                    title="leanconv demo: the digits CNN as rank-1 depthwise separable convs")


__all__ = ["run_demo", "trained_digits_cnn"]
