"""Measured per-layer latency for rank selection, cached on disk per device and setting.

A conversion under a latency budget needs each candidate module's latency on the device the
model runs on. Measuring is slow, so results are cached in ``<cache_dir>/latency.json``, keyed
by everything that changes a timing: torch version, device, thread count, dtype, memory format,
the module's kind and arguments, and the input shape. Weights do not change a timing, so
candidates are timed with fresh weights.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

try:  # the lock is POSIX; elsewhere saves merge without it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from leanconv._cache import cache_dir
from leanconv._files import write_atomic
from leanconv.timing import measure_latency
from leanconv.conversion.surgery import jsonable, padding_arg

Measure = Callable[[nn.Module, torch.Tensor], float]


def _default_measure(module: nn.Module, x: torch.Tensor) -> float:
    return measure_latency(module, x, min_run_time=0.1)


def describe(conv: nn.Conv2d, kind: str, options: Mapping[str, Any]) -> str:
    """A stable text key for ``conv``'s arguments built as ``kind`` with ``options`` (weights
    do not change a timing, so they are not in it)."""
    return (f"{kind}|C={conv.in_channels}|O={conv.out_channels}|k={tuple(conv.kernel_size)}|s={tuple(conv.stride)}|"
            f"p={padding_arg(conv)}|d={tuple(conv.dilation)}|g={conv.groups}|bias={conv.bias is not None}|"
            f"{conv.padding_mode}|{json.dumps(jsonable(options), sort_keys=True)}")


def device_key(device: torch.device) -> str:
    """The device and setting part of a cache key (threads matter on CPU, the GPU model on CUDA)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu/{torch.get_num_threads()}threads"
    return f"torch {torch.__version__}|{device.type}|{name}"


class LatencyCache:
    """Milliseconds per (setting, module description, input shape), persisted as JSON.

    ``path=None`` uses ``<cache_dir>/latency.json``; ``measure`` (module, input) -> ms replaces
    the real measurement (tests use it to count calls or to script timings).
    """

    def __init__(self, path: Optional[Path] = None, measure: Optional[Measure] = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "latency.json"
        self.measure = measure or _default_measure
        self.measured = 0  # timings taken by this object (cache misses)
        self._table: Dict[str, float] = _read_table(self.path)
        self._new: Dict[str, float] = {}  # measured here, merged into the file on save

    def latency(self, description: str, module: nn.Module, input_shape: Sequence[int],
                channels_last: bool = False) -> float:
        """Median latency in ms of ``module`` on a random input of ``input_shape`` (cached)."""
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else torch.float32
        key = (f"{device_key(device)}|{dtype}|{'channels_last' if channels_last else 'nchw'}|"
               f"{tuple(input_shape)}|{description}")
        if key not in self._table:
            x = torch.randn(tuple(input_shape), device=device, dtype=dtype)
            module = module.eval()
            if channels_last:
                x, module = x.contiguous(memory_format=torch.channels_last), module.to(memory_format=torch.channels_last)
            self._table[key] = self._new[key] = float(self.measure(module, x))
            self.measured += 1
        return self._table[key]

    def save(self) -> None:
        """Merge this object's new timings into the file, under a lock, and write it atomically:
        processes that share the cache never lose each other's timings."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**_read_table(self.path, warn=False), **self._new}
            write_atomic(self.path, json.dumps(merged, indent=1, sort_keys=True))
        self._table.update(merged)


def _read_table(path: Path, warn: bool = True) -> Dict[str, float]:
    """The timings in ``path``: entries that are not a positive, finite number of ms are dropped
    (they are measured again), with one warning naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as error:
        data, problem = {}, f"unreadable ({error})"
    else:
        problem = "" if isinstance(data, dict) else f"a {type(data).__name__}, not an object"
        data = data if isinstance(data, dict) else {}
    table = {key: float(ms) for key, ms in data.items() if isinstance(key, str) and _is_ms(ms)}
    if len(table) < len(data):
        problem = problem or f"{len(data) - len(table)} entries that are not a positive number of ms"
    if problem and warn:
        warnings.warn(f"latency cache {str(path)!r} is {problem}: ignoring that and measuring again", stacklevel=3)
    return table


def _is_ms(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


__all__ = ["LatencyCache", "describe", "device_key"]
