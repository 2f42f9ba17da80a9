"""Carry a PyTorch twin's weights into a leanconv Keras layer (layouts transposed).

PyTorch stores a conv kernel as ``(out, in/groups, kh, kw)`` (OIHW), Keras as
``(kh, kw, in/groups, out)`` (HWIO); a depthwise kernel is ``(C*m, 1, kh, kw)`` in PyTorch and
``(kh, kw, C, m)`` in Keras; a grouped transposed one ``(C, m, kh, kw)`` in PyTorch; an
``nn.Linear`` weight is ``(out, in)``, a ``Dense`` kernel ``(in, out)``. BatchNorm's
``weight``/``bias``/``running_mean``/``running_var`` are Keras' ``gamma``/``beta``/
``moving_mean``/``moving_variance``. With the weights copied, a layer and its twin give the
same output (channels_last input vs the same data in NCHW).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import keras
import numpy as np
import torch
from torch import nn

from leanconv import layers as tl
from leanconv.keras.asymmetric import AsymmetricConv2D
from leanconv.keras.attention import CBAM, ChannelGate, SpatialGate
from leanconv.keras.blocks import ASPP, ASPPPooling, ConvNormAct, SmallBasicBlock
from leanconv.keras.transposed import DepthwiseConv2DTranspose, DepthwiseSeparableConv2DTranspose, ResizeConv2D


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _assign(variable: Any, value: np.ndarray, what: str) -> None:
    if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(
            f"{what}: the Keras weight has shape {tuple(variable.shape)}, the PyTorch one converts to "
            f"{tuple(value.shape)} (do the two layers have the same configuration?)"
        )
    variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))


def _expect(module: Any, kind: Any, what: str) -> None:
    if not isinstance(module, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{what}: expected a PyTorch {names}, got {type(module).__name__}")


def _bias(keras_layer: Any, torch_bias: Optional[torch.Tensor], what: str) -> None:
    keras_bias = getattr(keras_layer, "bias", None)
    if (keras_bias is None) != (torch_bias is None):
        raise ValueError(f"{what}: bias on one side only (Keras {keras_bias is not None}, "
                         f"PyTorch {torch_bias is not None})")
    if keras_bias is not None:
        _assign(keras_bias, _array(torch_bias), f"{what}.bias")


def conv2d(layer: keras.layers.Conv2D, module: nn.Conv2d, what: str = "conv") -> None:
    """``nn.Conv2d`` (OIHW) -> ``Conv2D`` (HWIO) and its bias."""
    _expect(module, nn.Conv2d, what)
    _assign(layer.kernel, _array(module.weight.permute(2, 3, 1, 0)), f"{what}.kernel")
    _bias(layer, module.bias, what)


def dense(layer: keras.layers.Dense, module: nn.Module, what: str = "dense") -> None:
    """``nn.Linear`` ``(out, in)`` or a 1x1 ``nn.Conv2d`` on a pooled vector -> ``Dense`` ``(in, out)``."""
    _expect(module, (nn.Linear, nn.Conv2d), what)
    weight = module.weight if isinstance(module, nn.Linear) else module.weight[:, :, 0, 0]
    _assign(layer.kernel, _array(weight.t()), f"{what}.kernel")
    _bias(layer, module.bias, what)


def batch_norm(layer: Optional[keras.layers.BatchNormalization], module: nn.Module, what: str = "norm") -> None:
    """``BatchNorm2d`` -> ``BatchNormalization`` (affine and running statistics); None <-> Identity."""
    if layer is None:
        if not isinstance(module, nn.Identity):
            raise ValueError(f"{what}: the Keras layer has no norm, PyTorch has {type(module).__name__}")
        return
    _expect(module, nn.BatchNorm2d, what)
    if not np.isclose(layer.epsilon, module.eps):
        raise ValueError(f"{what}: epsilon {layer.epsilon} differs from PyTorch eps {module.eps}")
    for name, tensor in (("gamma", module.weight), ("beta", module.bias),
                         ("moving_mean", module.running_mean), ("moving_variance", module.running_var)):
        _assign(getattr(layer, name), _array(tensor), f"{what}.{name}")


def depthwise_kernel(weight: torch.Tensor, channels: int) -> np.ndarray:
    """PyTorch depthwise ``(C*m, 1, kh, kw)`` -> Keras ``(kh, kw, C, m)`` (channel ``c*m + j``)."""
    out, _, kh, kw = weight.shape
    return _array(weight.reshape(channels, out // channels, kh, kw).permute(2, 3, 0, 1))


def separable_conv2d(layer: keras.layers.SeparableConv2D, module: nn.Module, what: str = "conv") -> None:
    """:class:`leanconv.layers.DepthwiseSeparableConv2d` -> ``SeparableConv2D``."""
    _expect(module, tl.DepthwiseSeparableConv2d, what)
    _assign(layer.depthwise_kernel, depthwise_kernel(module.depthwise.weight, module.in_channels),
            f"{what}.depthwise_kernel")
    _assign(layer.pointwise_kernel, _array(module.pointwise.weight.permute(2, 3, 1, 0)), f"{what}.pointwise_kernel")
    _bias(layer, module.pointwise.bias, what)


def any_conv(layer: keras.layers.Layer, module: nn.Module, what: str = "conv") -> None:
    """Dispatch on the Keras conv type (``Conv2D``, ``SeparableConv2D`` or a leanconv layer)."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        separable_conv2d(layer, module, what)
    elif isinstance(layer, keras.layers.Conv2D):
        conv2d(layer, module, what)
    else:
        load_torch_weights(layer, module)


def conv_norm_act(layer: ConvNormAct, module: nn.Module, what: str) -> None:
    """A unit with ``conv`` and ``norm`` (``ConvNormAct``, ``KindConvNormAct``, ``ASPPPooling``)."""
    any_conv(layer.conv, module.conv, f"{what}.conv")
    batch_norm(layer.norm, module.norm, f"{what}.norm")


def _channel_gate(layer: ChannelGate, module: nn.Module) -> None:
    _expect(module, tl.ChannelGate, "channel_gate")
    if module.variant != layer.variant:
        raise ValueError(f"channel_gate: variant {layer.variant!r} differs from PyTorch {module.variant!r}")
    dense(layer.reduce, module.mlp.reduce, "channel_gate.reduce")
    dense(layer.expand, module.mlp.expand, "channel_gate.expand")


def _spatial_gate(layer: SpatialGate, module: nn.Module) -> None:
    _expect(module, tl.SpatialGate, "spatial_gate")
    if module.variant != layer.variant:
        raise ValueError(f"spatial_gate: variant {layer.variant!r} differs from PyTorch {module.variant!r}")
    conv2d(layer.conv, module.conv, "spatial_gate.conv")
    batch_norm(layer.norm, module.norm, "spatial_gate.norm")


def _cbam(layer: CBAM, module: nn.Module) -> None:
    _expect(module, tl.CBAM, "CBAM")
    _channel_gate(layer.channel_gate, module.channel_gate)
    _spatial_gate(layer.spatial_gate, module.spatial_gate)


def _asymmetric(layer: AsymmetricConv2D, module: nn.Module) -> None:
    _expect(module, tl.AsymmetricConv2d, "AsymmetricConv2D")
    if module.order != layer.order:
        raise ValueError(f"AsymmetricConv2D: order {layer.order!r} differs from PyTorch {module.order!r}")
    conv2d(layer.conv_kx1, module.conv_kx1, "conv_kx1")
    conv2d(layer.conv_1xk, module.conv_1xk, "conv_1xk")
    batch_norm(layer.norm, module.norm, "norm")


def _small_basic_block(layer: SmallBasicBlock, module: nn.Module) -> None:
    _expect(module, tl.SmallBasicBlock, "SmallBasicBlock")
    for name, norm in (("reduce", "norm1"), ("conv_kx1", "norm2"), ("conv_1xk", "norm3")):
        unit = getattr(layer, name)
        conv2d(unit.conv, getattr(module, name), name)
        batch_norm(unit.norm, getattr(module, norm), f"{name}.norm")
    conv2d(layer.expand, module.expand, "expand")


def _aspp_pooling(layer: ASPPPooling, module: nn.Module) -> None:
    _expect(module, tl.ASPPPooling, "pooling")
    conv_norm_act(layer.unit_layer, module, "pooling")


def _aspp(layer: ASPP, module: nn.Module) -> None:
    _expect(module, tl.ASPP, "ASPP")
    torch_branches = list(module.branches.items())
    if [b.name for b in layer.branches] != [name for name, _ in torch_branches]:
        raise ValueError(f"ASPP: Keras branches {[b.name for b in layer.branches]} differ from PyTorch "
                         f"{[name for name, _ in torch_branches]}")
    for branch, (name, twin) in zip(layer.branches, torch_branches):
        if isinstance(branch, ASPPPooling):
            _aspp_pooling(branch, twin)
        else:
            conv_norm_act(branch, twin, f"branches.{name}")
    conv_norm_act(layer.project, module.project, "project")


def _dw_transpose(layer: DepthwiseConv2DTranspose, module: nn.Module, what: str = "depthwise") -> None:
    _expect(module, nn.ConvTranspose2d, what)
    if module.groups != module.in_channels:
        raise ValueError(f"{what}: PyTorch groups={module.groups} must equal in_channels={module.in_channels}")
    _assign(layer.kernel, _array(module.weight.permute(2, 3, 0, 1)), f"{what}.kernel")
    _bias(layer, module.bias, what)


def _dsconv_transpose(layer: DepthwiseSeparableConv2DTranspose, module: nn.Module) -> None:
    _expect(module, tl.DepthwiseSeparableConvTranspose2d, "DepthwiseSeparableConv2DTranspose")
    if module.order != layer.order:
        raise ValueError(f"DepthwiseSeparableConv2DTranspose: order {layer.order!r} differs from "
                         f"PyTorch {module.order!r}")
    _dw_transpose(layer.depthwise, module.depthwise)
    conv2d(layer.pointwise, module.pointwise, "pointwise")
    batch_norm(layer.norm, module.norm, "norm")


def _resize_conv(layer: ResizeConv2D, module: nn.Module) -> None:
    _expect(module, tl.ResizeConv2d, "ResizeConv2D")
    any_conv(layer.conv, module.conv, "conv")


_LOADERS: Dict[type, Callable[[Any, nn.Module], None]] = {
    CBAM: _cbam,
    ChannelGate: _channel_gate,
    SpatialGate: _spatial_gate,
    AsymmetricConv2D: _asymmetric,
    SmallBasicBlock: _small_basic_block,
    ASPP: _aspp,
    ASPPPooling: _aspp_pooling,
    DepthwiseConv2DTranspose: _dw_transpose,
    DepthwiseSeparableConv2DTranspose: _dsconv_transpose,
    ResizeConv2D: _resize_conv,
}


def load_torch_weights(layer: keras.layers.Layer, module: nn.Module) -> keras.layers.Layer:
    """Copy the weights of PyTorch ``module`` into the built Keras ``layer``; return ``layer``.

    ``layer`` is a leanconv Keras layer and ``module`` its twin from :mod:`leanconv.layers`
    with the same configuration. Call the layer once (or ``build`` it) first so its weights
    exist. Raises ``ValueError`` naming the weight when types, variants or shapes disagree;
    the layer types are checked before anything is assigned.
    """
    loader = _LOADERS.get(type(layer))
    if loader is None:
        raise ValueError(f"layer={type(layer).__name__} is not a leanconv Keras layer; one of "
                         f"{sorted(k.__name__ for k in _LOADERS)} is expected")
    if not isinstance(module, nn.Module):
        raise ValueError(f"module={type(module).__name__} must be a torch.nn.Module")
    if not layer.built:
        raise ValueError(f"layer={layer.name!r} is not built: call it on an input (or build it) first")
    loader(layer, module)
    return layer


__all__ = ["batch_norm", "conv2d", "dense", "depthwise_kernel", "load_torch_weights", "separable_conv2d"]
