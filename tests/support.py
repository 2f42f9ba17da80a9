"""Helpers shared by the tests: traceability checks and BN randomization."""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn


def randomize_norms(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random running stats and (if affine) random scale and shift."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=generator))
                m.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=generator))
                    m.bias.copy_(torch.randn(n, generator=generator))
    return module


def check_traceable(module: nn.Module, *inputs: torch.Tensor, compile: bool = False) -> None:
    """The module gives the same eval output under fx, torch.export and channels_last.

    ``compile=True`` also runs ``torch.compile`` with the ``aot_eager`` backend (the inductor
    backend is exercised once, in test_compile.py, to keep the suite fast).
    """
    module = module.eval()
    with torch.no_grad():
        expected = module(*inputs)
        traced = torch.fx.symbolic_trace(copy.deepcopy(module))
        torch.testing.assert_close(traced(*inputs), expected)
        exported = torch.export.export(copy.deepcopy(module), tuple(inputs))
        torch.testing.assert_close(exported.module()(*inputs), expected)
        cl_inputs = tuple(
            t.to(memory_format=torch.channels_last) if t.is_floating_point() and t.dim() == 4 else t
            for t in inputs
        )
        cl_module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl_module(*cl_inputs), expected, rtol=1e-4, atol=1e-5)
        if compile:
            compiled = torch.compile(copy.deepcopy(module), backend="aot_eager", fullgraph=False)
            torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-4, atol=1e-5)
