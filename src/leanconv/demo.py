"""``leanconv demo``: :func:`leanconv.optimization.optimize` on the embedded default.

The digits CNN (:mod:`leanconv.models.digits`) trained on scikit-learn's bundled digits
(upsampled to 32x32; nothing is downloaded), converted with each layer's kind and rank chosen
by latency measured on the deployment target the original runs fastest on (a 2x request
against the original at its best there, at batch 16: :mod:`leanconv.conversion.auto`; the
one-channel stem stays dense), refit on 256 calibration images, distilled for
:data:`DISTILL_EPOCHS` epochs,
deployed in its fastest setting and measured at batch 1 and 16, everything on the chosen device (the CPU unless told; :func:`leanconv.optimization.optimize`'s ``device``). The
deployment is measured here: both models in every deployment setting, interleaved over
``rounds`` rounds (:func:`leanconv.bench.realized_efficiency`), each figure with its range over
rounds and "within noise" where the range of the speedup straddles 1. The trained original is
cached in the user cache folder (:func:`leanconv._cache.cache_dir`), so only the first run
trains it (on the CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from leanconv._cache import cache_dir
from leanconv._files import atomic_file, check_new_folder
from leanconv._validate import check_positive_int
from leanconv.bench import real_device, realized_efficiency
from leanconv.data import load_data, load_digits
from leanconv.models.digits import digits_cnn, train_digits_cnn
from leanconv.optimization import OptimizeResult, optimize, write_outputs
from leanconv.optimization import measure_on_targets as _on_targets

TRAIN_EPOCHS = 8
SEED = 0
ROUNDS = 5  # interleaved rounds per deployment measurement: enough for a range that means something
TARGET_SPEEDUP = 2.0  # asked of the per-layer search, against the original at its best on the target
SEARCH_BATCH = 16
DISTILL_EPOCHS = 10
"""The mixes a 2x request takes here refit to 40-90% accuracy; 3 epochs of distillation left
them up to 6 points below the original, 10-12 within a point of it or above (about 1 s per epoch)."""
TITLE = "leanconv demo: the digits CNN, each layer's kind chosen by latency on the fastest target"


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


def _check_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    """A real torch device (the CPU when None), checked before anything is trained."""
    return torch.device("cpu") if device is None else real_device(device, "run the demo")


def run_demo(out: Optional[Union[str, Path]] = "leanconv-demo", force: bool = False, epochs: int = DISTILL_EPOCHS,
             batch_sizes: Sequence[int] = (1, 16), progress: bool = True, min_run_time: float = 0.2,
             device: Optional[Union[str, torch.device]] = None, rounds: int = ROUNDS,
             targets: Union[None, str, Sequence[str]] = "all") -> OptimizeResult:
    """Run the demo; returns the :class:`leanconv.optimization.OptimizeResult` (written to ``out``).

    ``device``: where conversion, distillation and every measurement run (default the CPU; the
    cached original is moved as a copy); ``rounds``: interleaved rounds per deployment
    measurement, whose range each figure is reported with. ``targets``: the deployment targets
    both models are measured on too (``'all'``: every one available here; None: none), each
    model at its best, with accuracy per precision (:func:`leanconv.deploy.measure.measure_targets`).
    """
    target = _check_device(device)
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
        raise ValueError(f"batch_sizes={batch_sizes!r} must be a non-empty sequence of ints >= 1")
    for batch in batch_sizes:
        check_positive_int(batch, "batch_sizes")
    check_positive_int(rounds, "rounds")
    if out is not None:
        check_new_folder(out, force)  # refuse before training anything
    model, data = trained_digits_cnn(progress), load_data("digits")
    # deployment is measured below, on the chosen device, so optimize measures no batch size itself
    result = optimize(model, data, to="auto", target_speedup=TARGET_SPEEDUP, search_batch=SEARCH_BATCH, epochs=epochs,
                      lr=3e-3, alpha=0.5, batch_sizes=(), out=None, progress=progress, min_run_time=min_run_time,
                      title=TITLE, device=target)
    for batch in batch_sizes:
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"[bold cyan]leanconv[/bold cyan] measuring realized efficiency at batch "
                                       f"{batch} on {target} ({rounds} interleaved rounds)")
        result.efficiency[batch] = realized_efficiency(model, result.model.eval(), data.input_size(batch),
                                                       min_run_time=min_run_time, rounds=rounds, device=target)
        if targets is not None:
            result.targets[batch] = _on_targets(model, result.model.eval(), data, batch, targets, rounds,
                                                min_run_time, target)
    if out is not None:
        write_outputs(result, out, force, TITLE)
        result.out = Path(out)
    return result


__all__ = ["DISTILL_EPOCHS", "run_demo", "trained_digits_cnn"]
