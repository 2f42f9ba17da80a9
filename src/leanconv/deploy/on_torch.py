"""PyTorch targets: ``torch`` (eager), ``torch-frozen`` (TorchScript, oneDNN-prepacked) and
``torch-compile`` (``torch.compile``; opt-in, it compiles for a while).

Precisions: fp32 everywhere; bf16 on a CPU with AVX512_BF16 or AMX (oneDNN runs it there) and
on GPUs; tf32 and fp16 on CUDA. bf16/fp16 cast the model and input (weights stored in that
precision, as deployed), except eager bf16 on the CPU, which runs under autocast. Every form is
built on a copy in eval mode with BatchNorm folded (``leanconv.fuse``) and channels_last
memory, which is what each runtime's fast convolutions want; the user's model is not changed.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

import torch
from torch import nn

from leanconv.bench import frozen_module
from leanconv.deploy.target import Deployed, Target, first_output, register_target

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convs on CUDA while the block runs (the global flags are given back)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def prepared(model: nn.Module, precision: str, device: torch.device, cast: bool) -> nn.Module:
    """A fused, channels_last copy of ``model`` on ``device`` in eval mode (cast to ``precision`` if ``cast``)."""
    from leanconv.fusion import fuse

    work = fuse(copy.deepcopy(model).float().eval()).to(device)
    if cast and precision in ("bf16", "fp16"):
        work = work.to(DTYPES[precision])
    return work.to(memory_format=torch.channels_last)


def _runner(module: Callable, precision: str, device: torch.device, autocast: bool) -> Callable:
    dtype = DTYPES[precision]

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), _tf32(precision == "tf32"):
            if autocast:
                with torch.autocast(device.type, dtype=dtype):
                    return first_output(module(x)).float()
            return first_output(module(x if precision in ("fp32", "tf32") else x.to(dtype))).float()

    return run


class EagerTorch(Target):
    def build(self, model: nn.Module, example: torch.Tensor, precision: str,
              calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        device = example.device
        autocast = precision == "bf16" and device.type == "cpu"
        work = prepared(model, precision, device, cast=not autocast)
        note = "fused, channels_last" + (", autocast" if autocast else "")
        return Deployed(self.name, precision, precision, str(device), _runner(work, precision, device, autocast), note)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch runs on ``count`` CPU threads while the block runs (the setting is given back)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class FrozenTorch(Target):
    def build_for_timing(self, module: nn.Module, example: torch.Tensor, precision: str,
                         calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        """As :meth:`build`, traced and frozen on the ``threads`` it is timed on: the trace runs
        the layer, and on a busy machine torch's default threads wait on each other (one layer
        took 140 ms on two threads against 1.5 ms on one)."""
        with _threads(threads):
            return self.build(module, example, precision, calib, threads)

    def build(self, model: nn.Module, example: torch.Tensor, precision: str,
              calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        device = example.device
        work = prepared(model, precision, device, cast=True)
        x = example.to(device).contiguous(memory_format=torch.channels_last)
        x = x if precision in ("fp32", "tf32") else x.to(DTYPES[precision])
        with _tf32(precision == "tf32"):
            frozen = frozen_module(work, x)  # the output is checked against eager by the caller
        return Deployed(self.name, precision, precision, str(device), _runner(frozen, precision, device, False),
                        "fused, channels_last, traced + frozen")


class CompiledTorch(Target):
    def build(self, model: nn.Module, example: torch.Tensor, precision: str,
              calib: Optional[List[torch.Tensor]], threads: int) -> Deployed:
        device = example.device
        work = prepared(model, precision, device, cast=True)
        mode = "reduce-overhead" if device.type == "cuda" and example.shape[0] <= 16 else None  # CUDA graphs
        compiled = torch.compile(work, mode=mode, dynamic=False)
        run = _runner(compiled, precision, device, False)
        run(example)  # compile now, not inside the first timed call
        note = "fused, channels_last, torch.compile" + (" (CUDA graphs)" if mode else "")
        return Deployed(self.name, precision, precision, str(device), run, note)


register_target(EagerTorch("torch", "torch", ("fp32", "tf32", "bf16", "fp16"), ("cpu", "cuda")))
register_target(FrozenTorch("torch-frozen", "torch", ("fp32", "tf32", "bf16", "fp16"), ("cpu", "cuda")))
register_target(CompiledTorch("torch-compile", "torch", ("fp32", "tf32", "bf16", "fp16"), ("cpu", "cuda"),
                              default=False))

__all__ = ["CompiledTorch", "EagerTorch", "FrozenTorch", "prepared"]
