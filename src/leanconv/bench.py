"""Latency measurement: warm-up, then the median of ``torch.utils.benchmark`` adaptive runs.

Used by ``compare(measure=True)``, ``profile`` tooling and the scripts in ``benchmarks/``, so
every latency leanconv reports is measured the same way.
"""

from __future__ import annotations

import torch
from torch.utils import benchmark


def measure_latency(module: torch.nn.Module, x: torch.Tensor, min_run_time: float = 0.2, warmup: int = 3) -> float:
    """Median latency of ``module(x)`` in milliseconds (inference mode, CUDA synchronized)."""
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        timer = benchmark.Timer(stmt="module(x)", globals={"module": module, "x": x})
        return timer.adaptive_autorange(min_run_time=min_run_time).median * 1e3


__all__ = ["measure_latency"]
