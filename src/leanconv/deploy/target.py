"""Deployment targets: one runtime, device and precision that a model can be run in.

A :class:`Target` (one per runtime: PyTorch, onnxruntime, OpenVINO) turns a float model into a
:class:`Deployed` callable for one precision, from an example input (and calibration batches
where the precision needs them: int8). Targets are registered by name in :data:`TARGETS`, like
conv kinds in the kind registry. :func:`deploy` builds one; :func:`output_difference` compares
a deployment with fp32 PyTorch eager. :mod:`leanconv.deploy.measure` times them all.

A target whose runtime is not installed, or a precision the hardware lacks, says why
(:meth:`Target.missing`, :meth:`Target.unsupported`): measuring skips it with that reason,
while asking for it explicitly is one clear error naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from leanconv.analysis.counting import model_device

PRECISIONS: Tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "int8")
TOLERANCES: Dict[str, float] = {"fp32": 1e-3, "tf32": 1e-2, "fp16": 2e-2, "bf16": 6e-2, "int8": 0.25}
"""Largest relative output difference (``||y - y_fp32|| / ||y_fp32||``) a precision may show
against fp32 PyTorch eager before its output counts as wrong. bf16 keeps 8 mantissa bits (one
conv rounds to ~0.4% per value; errors grow with depth); int8 per-tensor activations lose more."""


@dataclass
class Deployed:
    """A model made ready for one target: ``run(x)`` gives the output as a torch tensor.

    ``ran`` is the precision that actually ran, as the runtime reports it (OpenVINO may run
    bf16 when asked for fp32 on a CPU with AMX unless told not to); ``note`` says anything the
    reader of a table should know (the setting, a fallback)."""

    target: str
    precision: str
    ran: str
    device: str
    run: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


@dataclass
class Target(ABC):
    """One runtime. Subclasses set the fields and implement :meth:`build`; the base checks."""

    name: str
    runtime: str
    precisions: Tuple[str, ...]
    devices: Tuple[str, ...] = ("cpu",)
    modules: Tuple[str, ...] = ()
    """Python modules the runtime needs (checked by :meth:`missing`)."""
    extra: str = ""
    """The leanconv extra that installs them (named in errors)."""
    default: bool = True
    """Whether measuring includes it when no targets are named (slow-to-build ones opt in)."""
    calling: str = ""
    """How a deployment is called, where that changed from the first way and changes a timing
    (part of the latency cache's key, so older timings stop matching)."""

    def missing(self) -> Optional[str]:
        """Why the runtime cannot be used here (None: it can)."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"{', '.join(absent)} not installed (pip install 'leanconv[{self.extra}]')"
        return None

    def unsupported(self, precision: str, device: str) -> Optional[str]:
        """Why ``precision`` on ``device`` cannot run here (None: it can)."""
        if precision not in self.precisions:
            return f"{self.name} has no {precision} (it runs {', '.join(self.precisions)})"
        kind = torch.device(device).type
        if kind not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)}, not {kind}"
        if kind == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        return hardware_gap(precision, kind)

    def computes_wrongly(self, kind: str, options: Dict[str, Any]) -> Optional[str]:
        """Why this runtime computes a layer of ``kind`` with ``options`` wrongly inside a model
        (None: it does not, as far as measured); a per-layer search does not offer such layers."""
        return None

    @abstractmethod
    def build(self, model: nn.Module, example: torch.Tensor, precision: str,
              calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        """``model`` deployed for ``precision`` on ``example``'s device (each runtime's own way)."""

    def build_for_timing(self, module: nn.Module, example: torch.Tensor, precision: str,
                         calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        """``module`` (one layer, timed by a conversion's search, many times over) deployed the
        quickest way that runs the same kernels as :meth:`build`. The base builds it as
        :meth:`build` does; a target whose build is slow overrides this."""
        return self.build(module, example, precision, calib, threads)

    def runtime_version(self) -> str:
        """The runtime and its installed version (``'onnxruntime 1.23.2'``), what a timing depends
        on: the distribution that installs the first of :attr:`modules`, torch's own version
        (``'torch 2.9.1+cu128'``) for a target that needs no other module."""
        if not self.modules:
            return f"torch {torch.__version__}"
        from importlib import metadata

        module = self.modules[0]
        if importlib.util.find_spec(module) is None:
            return f"{module} (not installed)"
        try:
            return f"{module} {metadata.version(module)}"
        except metadata.PackageNotFoundError:  # installed under another name: onnxruntime-gpu, ...
            for name in metadata.packages_distributions().get(module, []):
                return f"{name} {metadata.version(name)}"
        return f"{module} (version unknown)"


def cpu_flags() -> List[str]:
    """The CPU features that decide which precisions run natively (from /proc/cpuinfo; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo; the platform's machine type elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def hardware_gap(precision: str, device_type: str) -> Optional[str]:
    """Why this machine's ``device_type`` lacks ``precision`` natively (None: it has it)."""
    if device_type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16"
        if precision == "tf32" and torch.cuda.get_device_capability()[0] < 8:
            return "TF32 needs an Ampere or newer GPU"
        return None
    flags = cpu_flags()
    if precision == "bf16" and not {"avx512_bf16", "amx_bf16"} & set(flags):
        return "this CPU has no native bf16 (AVX512_BF16 or AMX)"
    if precision in ("tf32", "fp16"):
        return f"{precision} is a GPU precision"
    return None


TARGETS: Dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Add ``target`` to :data:`TARGETS` under its name (a second one of the same name is refused)."""
    if target.name in TARGETS:
        raise ValueError(f"target {target.name!r} is registered already")
    TARGETS[target.name] = target
    return target


def registered() -> Dict[str, Target]:
    """Every registered target by name. The built-in ones register themselves when
    :mod:`leanconv.deploy.runtimes` is imported (kept out of this module: no circle)."""
    importlib.import_module("leanconv.deploy.runtimes")
    return TARGETS


def get_target(name: str) -> Target:
    targets = registered()
    if name not in targets:
        raise ValueError(f"target={name!r} must be one of {sorted(targets)}")
    return targets[name]


def runtime_version(target: str) -> str:
    """``target``'s runtime and its installed version, e.g. ``'onnxruntime 1.23.2'`` (see
    :meth:`Target.runtime_version`)."""
    return get_target(target).runtime_version()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
    return precision


def deploy(model: nn.Module, target: str = "torch", precision: str = "fp32", *,
           example: Optional[torch.Tensor] = None, input_size: Optional[Sequence[int]] = None,
           calib: Optional[List[torch.Tensor]] = None, device: Optional[str] = None, threads: int = 1) -> Deployed:
    """``model`` ready to run on ``target`` in ``precision`` (asked explicitly: a missing runtime or
    a precision this hardware lacks is an error naming why). ``example`` (or a seeded random input
    of ``input_size``) fixes the input shape; int8 needs ``calib`` batches (the example otherwise)."""
    entry = get_target(target)
    check_precision(precision)
    device = device or str(model_device(model))
    why = entry.missing() or entry.unsupported(precision, device)
    if why is not None:
        raise ValueError(f"target={target!r} precision={precision!r}: {why}")
    example = example if example is not None else example_input(input_size, device)
    return entry.build(model, example.to(device), precision, calib, threads)


def example_input(input_size: Optional[Sequence[int]], device: str = "cpu", seed: int = 0) -> torch.Tensor:
    if input_size is None:
        raise ValueError("pass example= (an input tensor) or input_size=(N, C, H, W)")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(input_size), generator=generator).to(device)


@torch.no_grad()
def reference_output(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """fp32 PyTorch eager output of ``model`` (eval mode on a copy: the model is not changed)."""
    import copy

    work = copy.deepcopy(model).float().eval()
    return first_output(work(example.float()))


def first_output(output) -> torch.Tensor:
    """The first tensor of a model's output (a tensor, or a tuple/list/dict holding tensors)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"the model returned a {type(output).__name__} without tensors")


def tolerance_problem(difference: float, precision: str) -> Optional[str]:
    """Why an output ``difference`` (:func:`output_difference`) is too large for ``precision``
    (:data:`TOLERANCES`); None where it is within."""
    if difference <= TOLERANCES[precision]:
        return None
    return f"output differs by {difference:.2e} > {TOLERANCES[precision]:.2g} allowed for {precision}"


def output_difference(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative difference ``||output - reference|| / ||reference||`` (float64, on the CPU)."""
    output, reference = output.detach().double().cpu(), reference.detach().double().cpu()
    if output.shape != reference.shape:
        raise ValueError(f"deployed output has shape {tuple(output.shape)}, the model's is {tuple(reference.shape)}")
    scale = float(reference.norm())
    return float((output - reference).norm()) / scale if scale else float((output - reference).norm())


__all__ = ["Deployed", "PRECISIONS", "TARGETS", "TOLERANCES", "Target", "check_precision", "cpu_flags", "cpu_name", "deploy",
           "example_input", "first_output", "get_target", "hardware_gap", "output_difference", "reference_output",
           "register_target", "registered", "runtime_version", "tolerance_problem"]
