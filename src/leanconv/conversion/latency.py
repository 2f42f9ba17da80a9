"""Measured per-layer latency for rank selection, cached on disk per device and setting.

A conversion under a latency budget needs each candidate module's latency on the device the
model runs on. Measuring is slow, so results are cached in ``<cache_dir>/latency.json``, keyed
by everything that changes a timing: torch version, device, thread count, dtype, memory format,
the module's kind and arguments, and the input shape. Weights do not change a timing, so
candidates are timed with fresh weights.

By default a module is timed in PyTorch eager on its own device. With a :class:`TimingSetting`
it is timed where the model will be deployed instead: built by a deployment target
(:mod:`leanconv.deploy`: onnxruntime, OpenVINO, TorchScript...) in a precision, on a device and
a number of threads, and its timings are cached under everything that setting changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv._cache import TableKind, cache_dir, merge_table, read_table
from leanconv.deploy.target import Deployed, check_precision, cpu_name, get_target
from leanconv.timing import measure_latency, synchronized, time_interleaved
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


CALIBRATION_BATCHES = 2
"""Seeded random batches that int8 timings calibrate on, besides the timed input itself."""


@dataclass(frozen=True)
class TimingSetting:
    """Where per-layer timings run: a deployment target (:mod:`leanconv.deploy`) and precision,
    the device, the threads.

    ``min_run_time`` is the seconds of one adaptive timing: a conversion times many layers, and
    one layer's timing settles in a short run.
    """

    target: str
    """A registered target name: ``'onnxruntime'``, ``'openvino'``, ``'torch'``, ``'torch-frozen'``, ..."""
    precision: str = "fp32"
    device: str = "cpu"
    threads: int = 1
    min_run_time: float = 0.05

    def check(self) -> None:
        """One ``ValueError`` naming the argument when the target is unknown or not installed,
        cannot run the precision on the device here, or the threads or run time are not usable."""
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 1")
        if (isinstance(self.min_run_time, bool) or not isinstance(self.min_run_time, (int, float))
                or not 0 < self.min_run_time < math.inf):
            raise ValueError(f"min_run_time={self.min_run_time!r} must be a positive number of seconds")
        entry = get_target(self.target)
        check_precision(self.precision)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={self.device!r} is not a torch device ('cpu', 'cuda', 'cuda:1')") from None
        why = entry.missing() or entry.unsupported(self.precision, self.device)
        if why is not None:
            raise ValueError(f"target={self.target!r} precision={self.precision!r} device={self.device!r}: {why}")

    def key(self) -> str:
        """The cache key part for this setting: everything that changes a timing (the target,
        its runtime and version and how it is called, the device's model, the precision, the
        threads)."""
        entry = get_target(self.target)
        runtime = entry.runtime_version() + (f" ({entry.calling})" if entry.calling else "")
        return f"{self.target}|{runtime}|{_device_name(self.device)}|{self.precision}|{self.threads}threads"

    def measure(self, module: nn.Module, x: torch.Tensor) -> float:
        """Milliseconds of ``module`` on ``x``, deployed by :func:`deployed_layer`: the median of
        one short adaptive timing on :attr:`threads` threads, after a warm-up."""
        deployed = deployed_layer(self, module, x)
        x = x.to(self.device)
        call = synchronized(lambda: deployed(x), torch.device(self.device))
        return time_interleaved([call], rounds=1, warmup=3, min_run_time=self.min_run_time,
                                num_threads=self.threads).spread(0).median


def deployed_layer(setting: TimingSetting, module: nn.Module, x: torch.Tensor) -> Deployed:
    """``module`` deployed on ``setting``'s target, precision, device and threads for input ``x``,
    built the quickest way for timing (:meth:`leanconv.deploy.target.Target.build_for_timing`);
    int8 calibrates on ``x`` and :data:`CALIBRATION_BATCHES` seeded random batches of its shape
    (the weights are fresh: only the timing of the result counts)."""
    setting.check()
    x = x.detach().to(setting.device)
    calib = None
    if setting.precision == "int8":
        generator = torch.Generator().manual_seed(0)
        calib = [x] + [torch.randn(tuple(x.shape), generator=generator).to(x) for _ in range(CALIBRATION_BATCHES)]
    return get_target(setting.target).build_for_timing(module, x, setting.precision, calib, setting.threads)


def _device_name(device: str) -> str:
    """``'cpu:<model name>'`` or ``'cuda:<GPU name>'`` (timings differ between models, not between
    two cards of one model)."""
    place = torch.device(device)
    if place.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(place) if torch.cuda.is_available() else '(no CUDA)'}"
    return f"{place.type}:{cpu_name() if place.type == 'cpu' else ''}"


class LatencyCache:
    """Milliseconds per (setting, module description, input shape), persisted as JSON.

    ``path=None`` uses ``<cache_dir>/latency.json``; ``measure`` (module, input) -> ms replaces
    the real measurement (tests use it to count calls or to script timings). ``setting`` times
    on a deployment target (:class:`TimingSetting`; checked here unless ``measure`` replaces
    its measurement) and keys the timings by it; without one, modules are timed in PyTorch
    eager on their own device.
    """

    def __init__(self, path: Optional[Path] = None, measure: Optional[Measure] = None,
                 setting: Optional[TimingSetting] = None) -> None:
        if setting is not None and not isinstance(setting, TimingSetting):
            raise TypeError(f"setting must be a TimingSetting, not {type(setting).__name__}")
        if setting is not None and measure is None:
            setting.check()
        self.path = Path(path) if path is not None else cache_dir() / "latency.json"
        self.setting = setting
        self.measure = measure or (setting.measure if setting is not None else _default_measure)
        self.measured = 0  # timings taken by this object (cache misses)
        self._setting_key = setting.key() if setting is not None else None  # read once: it reads the CPU model
        self._table: Dict[str, float] = _read_table(self.path)
        self._new: Dict[str, float] = {}  # measured here, merged into the file on save

    def latency(self, description: str, module: nn.Module, input_shape: Sequence[int],
                channels_last: bool = False) -> float:
        """Median latency in ms of ``module`` on a random input of ``input_shape`` (cached)."""
        key, device, dtype = self._key(description, module, input_shape, channels_last)
        if key not in self._table:
            x = torch.randn(tuple(input_shape), device=device, dtype=dtype)
            module = module.eval()
            if channels_last:
                x, module = x.contiguous(memory_format=torch.channels_last), module.to(memory_format=torch.channels_last)
            self._table[key] = self._new[key] = float(self.measure(module, x))
            self.measured += 1
        return self._table[key]

    def _key(self, description: str, module: Optional[nn.Module], input_shape: Sequence[int],
             channels_last: bool = False) -> Tuple[str, torch.device, torch.dtype]:
        """The cache key of a timing, and the device and dtype its input is made on."""
        if self.setting is not None:  # deployed from a float32 copy on the setting's device
            device, dtype, where = torch.device(self.setting.device), torch.float32, self._setting_key
        else:
            parameter = next(module.parameters(), None) if module is not None else None
            device = parameter.device if parameter is not None else torch.device("cpu")
            dtype = parameter.dtype if parameter is not None else torch.float32
            where = device_key(device)
        key = f"{where}|{dtype}|{'channels_last' if channels_last else 'nchw'}|{tuple(input_shape)}|{description}"
        return key, device, dtype

    def known(self, description: str, input_shape: Sequence[int]) -> Optional[float]:
        """The cached ms of ``description`` at ``input_shape`` in this cache's setting (None: not measured)."""
        return self._table.get(self._key(description, None, input_shape)[0])

    def remember(self, description: str, input_shape: Sequence[int], ms: float) -> None:
        """Record a timing taken elsewhere (a whole model measured with its outputs checked)."""
        if not _is_ms(ms):
            raise ValueError(f"ms={ms!r} must be a positive, finite number of milliseconds")
        key = self._key(description, None, input_shape)[0]
        self._table[key] = self._new[key] = float(ms)

    def save(self) -> None:
        """Merge this object's new timings into the file, under a lock, and write it atomically:
        processes that share the cache never lose each other's timings."""
        self._table.update(merge_table(self.path, self._new, _TIMINGS))


def _read_table(path: Path, warn: bool = True) -> Dict[str, float]:
    """The timings in ``path`` (entries that are not a positive, finite number of ms are dropped:
    they are measured again)."""
    return {key: float(ms) for key, ms in read_table(path, _TIMINGS, warn).items()}


def _is_ms(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


_TIMINGS = TableKind("latency", _is_ms, "a positive number of ms")


__all__ = ["CALIBRATION_BATCHES", "LatencyCache", "TimingSetting", "deployed_layer", "describe", "device_key"]
