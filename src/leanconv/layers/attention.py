"""Channel and spatial attention: squeeze-and-excitation and CBAM.

Both re-weight a feature map with gates computed from pooled statistics, for a handful of
parameters and MACs that do not grow with the spatial size (except CBAM's one-channel
spatial conv). The output has the input's shape.
"""

from __future__ import annotations

from numbers import Real
from typing import Optional

import torch
from torch import nn

from leanconv._validate import check_callable_or_none, check_input, check_positive_int
from leanconv.layers.conv import Conv2d, IntPair, ModuleFactory, make_act
from leanconv.rules import (
    check_cbam_variant,
    check_odd_kernel,
)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: scale each channel by a gate computed from the global average.

    ``x * gate(expand(act(reduce(mean_hw(x)))))`` with 1x1 convs ``reduce`` (``C -> r``, bias)
    and ``expand`` (``r -> C``, bias); ``r = rd_channels`` or ``max(1, round(C / reduction))``.
    Params ``2*C*r + C + r``; MACs ``2*C*r`` per image plus ``C*H*W`` multiplies for the scaling.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 4,
        rd_channels: Optional[int] = None,
        act_layer: Optional[ModuleFactory] = nn.ReLU,
        gate_layer: ModuleFactory = nn.Sigmoid,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        if isinstance(reduction, bool) or not isinstance(reduction, Real) or not reduction > 0:
            raise ValueError(f"reduction={reduction!r} must be a number > 0")
        if rd_channels is None:
            rd_channels = max(1, round(channels / reduction))
        else:
            check_positive_int(rd_channels, "rd_channels")
        check_callable_or_none(act_layer, "act_layer")
        if gate_layer is None or not callable(gate_layer):
            raise ValueError(f"gate_layer={gate_layer!r} must be a callable returning an nn.Module")
        self.channels = channels
        self.rd_channels = rd_channels
        factory = dict(device=device, dtype=dtype)
        self.reduce = Conv2d(channels, rd_channels, 1, bias=True, **factory)
        self.act = make_act(act_layer)
        self.expand = Conv2d(rd_channels, channels, 1, bias=True, **factory)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, type(self).__name__)
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class GateMLP(nn.Module):
    """Two-layer bottleneck ``expand(act(reduce(v)))``: the shared MLP of CBAM's channel gate.

    ``reduce``/``expand`` are ``nn.Linear`` (on ``(N, C)`` vectors) or 1x1 convs (on
    ``(N, C, 1, 1)`` maps), depending on the CBAM variant.
    """

    def __init__(self, reduce: nn.Module, act: nn.Module, expand: nn.Module) -> None:
        super().__init__()
        self.reduce = reduce
        self.act = act
        self.expand = expand

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.expand(self.act(self.reduce(v)))


class ChannelGate(nn.Module):
    """CBAM channel attention: ``x * sigmoid(mlp(avg_hw(x)) + mlp(max_hw(x)))``.

    ``variant='paper'``: ``mlp`` is ``Linear(C, r)`` + ReLU + ``Linear(r, C)``, both with bias.
    ``variant='common'``: ``mlp`` is 1x1 ``Conv2d(C, r)`` + ReLU + ``Conv2d(r, C)``, no bias.
    """

    def __init__(self, channels: int, hidden: int, variant: str = "paper", device=None, dtype=None) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(hidden, "hidden")
        check_cbam_variant(variant)
        self.channels = channels
        self.variant = variant
        factory = dict(device=device, dtype=dtype)
        if variant == "paper":
            self.mlp = GateMLP(nn.Linear(channels, hidden, **factory), nn.ReLU(),
                               nn.Linear(hidden, channels, **factory))
        else:
            self.mlp = GateMLP(Conv2d(channels, hidden, 1, bias=False, **factory), nn.ReLU(),
                               Conv2d(hidden, channels, 1, bias=False, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, type(self).__name__)
        keep = self.variant == "common"
        avg = x.mean((2, 3), keepdim=keep)
        peak = x.amax((2, 3), keepdim=keep)
        logits = self.mlp(avg) + self.mlp(peak)
        if not keep:
            logits = logits[:, :, None, None]
        return x * torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(norm(conv(pooled)))`` with a 2 -> 1 kxk ``conv``.

    ``pooled`` stacks the per-pixel max and mean over channels: ``(max, mean)`` for
    ``variant='paper'`` (then ``norm`` is ``BatchNorm2d(1, eps=1e-5, momentum=0.01)``),
    ``(mean, max)`` for ``variant='common'`` (``norm`` is ``nn.Identity``). ``conv`` has no bias,
    padding ``(k-1)//2``. MACs ``2*k*k*H*W``.
    """

    conv_norm_pairs = (("conv", "norm"),)

    def __init__(self, kernel_size: IntPair = 7, variant: str = "paper", device=None, dtype=None) -> None:
        super().__init__()
        kernel = check_odd_kernel(kernel_size, reason="so that the gate keeps the input size")
        check_cbam_variant(variant)
        self.variant = variant
        factory = dict(device=device, dtype=dtype)
        self.conv = Conv2d(2, 1, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=False, **factory)
        self.norm = (nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, **factory) if variant == "paper"
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.fx.Proxy) and x.dim() != 4:
            raise ValueError(f"{type(self).__name__}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
        peak = x.amax(1, keepdim=True)
        avg = x.mean(1, keepdim=True)
        pooled = torch.cat((peak, avg) if self.variant == "paper" else (avg, peak), dim=1)
        return x * torch.sigmoid(self.norm(self.conv(pooled)))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: ``spatial_gate(channel_gate(x))``, same shape out.

    ``variant='paper'`` (default) has the structure of the authors' public code, which produced
    the published ImageNet results: channel MLP of ``nn.Linear`` layers with bias; spatial input
    ``(max, mean)`` over channels; kxk conv without bias followed by ``BatchNorm2d(1)``
    (eps 1e-5, momentum 0.01). ``variant='common'`` is the lighter form found in many
    re-implementations: channel MLP of bias-free 1x1 convs, spatial input ``(mean, max)``, no BN.
    Hidden width ``max(1, C // reduction)``. Params ``2*C*r (+ r + C)`` and ``2*k*k (+2)``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: IntPair = 7,
        variant: str = "paper",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(reduction, "reduction")
        check_cbam_variant(variant)
        self.channels = channels
        self.variant = variant
        self.hidden = max(1, channels // reduction)
        self.channel_gate = ChannelGate(channels, self.hidden, variant, device=device, dtype=dtype)
        self.spatial_gate = SpatialGate(kernel_size, variant, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, type(self).__name__)
        return self.spatial_gate(self.channel_gate(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, variant={self.variant!r}"


__all__ = ["CBAM", "ChannelGate", "GateMLP", "SpatialGate", "SqueezeExcite"]
