"""The one timer: every latency leanconv reports is measured by :func:`measure_latency`.

Warm-up, then the median of ``torch.utils.benchmark`` adaptive runs, in inference mode and
synchronized on CUDA. ``torch.utils.benchmark.Timer`` runs on ``num_threads`` threads (1 unless
told), whatever ``torch.get_num_threads()`` says. It lives apart from :mod:`leanconv.bench`
(deployment settings) so that analysis and conversion can time a layer without importing them.
"""

from __future__ import annotations

import torch
from torch.utils import benchmark


def measure_latency(module: torch.nn.Module, x: torch.Tensor, min_run_time: float = 0.2, warmup: int = 3,
                    *, num_threads: int = 1) -> float:
    """Median latency of ``module(x)`` in milliseconds (inference mode, CUDA synchronized),
    timed on ``num_threads`` CPU threads (``torch.utils.benchmark``'s default: 1)."""
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        timer = benchmark.Timer(stmt="module(x)", globals={"module": module, "x": x}, num_threads=num_threads)
        # a noisy machine would keep adaptive_autorange going for its default 10 s: cap it
        return timer.adaptive_autorange(min_run_time=min_run_time, max_run_time=max(1.0, 5 * min_run_time)).median * 1e3


__all__ = ["measure_latency"]
