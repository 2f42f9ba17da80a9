"""CBAM for Keras: channel attention then spatial attention, same variants as the PyTorch twin.

``variant='paper'`` (default) follows the structure of the CBAM authors' public code, which
produced the published results: a channel MLP of ``Dense`` layers with bias, the spatial gate
reads ``(max, mean)`` over channels, and its kxk conv (no bias) is followed by a
``BatchNormalization`` (epsilon 1e-5; Keras momentum 0.99 = PyTorch momentum 0.01).
``variant='common'`` is the lighter re-implementation form: a bias-free MLP (the 1x1 convs of
:class:`leanconv.layers.ChannelGate` acting on a pooled vector are ``Dense`` layers without bias),
``(mean, max)`` order, no norm. Output shape = input shape.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import keras

from leanconv._validate import check_choice, check_positive_int
from leanconv.keras._base import LeanLayer, Shape, batch_norm, ops
from leanconv import rules
from leanconv.rules import CBAM_VARIANTS


def _check_odd(kernel_size: Any) -> tuple:
    return rules.check_odd_kernel(kernel_size, "so that the gate keeps the input size")


@keras.saving.register_keras_serializable(package="leanconv")
class ChannelGate(LeanLayer):
    """CBAM channel attention: ``x * sigmoid(mlp(mean_hw(x)) + mlp(max_hw(x)))``.

    ``mlp`` is ``reduce`` (``Dense(hidden)``), ReLU, ``expand`` (``Dense(C)``), shared by both
    pooled vectors; ``hidden = max(1, C // reduction)`` is fixed when the layer is built.
    """

    def __init__(self, reduction: int = 16, variant: str = "paper", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduction = check_positive_int(reduction, "reduction")
        check_choice(variant, "variant", CBAM_VARIANTS)
        self.variant = variant
        self.hidden: Optional[int] = None
        self.reduce: Optional[keras.layers.Dense] = None
        self.expand: Optional[keras.layers.Dense] = None

    def build(self, input_shape: Shape) -> None:
        channels = self.lock_channels(input_shape)
        self.hidden = max(1, channels // self.reduction)
        use_bias = self.variant == "paper"
        self.reduce = keras.layers.Dense(self.hidden, use_bias=use_bias, name="reduce", **self.kernel_options())
        self.expand = keras.layers.Dense(channels, use_bias=use_bias, name="expand", **self.kernel_options())
        self.build_chain((self.reduce, self.expand), (input_shape[0], channels))

    def call(self, x: Any) -> Any:
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        logits = self._mlp(ops.mean(x, axis=axes)) + self._mlp(ops.max(x, axis=axes))
        gate = ops.sigmoid(logits)
        for axis in axes:
            gate = ops.expand_dims(gate, axis)
        return x * gate

    def _mlp(self, v: Any) -> Any:
        return self.expand(ops.relu(self.reduce(v)))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(reduction=self.reduction, variant=self.variant)
        return config


@keras.saving.register_keras_serializable(package="leanconv")
class SpatialGate(LeanLayer):
    """CBAM spatial attention: ``x * sigmoid(norm(conv(pool_c(x))))`` with a 2 -> 1 kxk ``conv``.

    ``pool_c`` stacks the per-pixel max and mean over channels (``(max, mean)`` for 'paper',
    ``(mean, max)`` for 'common'); ``conv`` has no bias and 'same' padding (odd kernel, stride 1:
    symmetric, as in PyTorch); ``norm`` exists only for 'paper'.
    """

    def __init__(self, kernel_size: Any = 7, variant: str = "paper", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel_size = _check_odd(kernel_size)
        check_choice(variant, "variant", CBAM_VARIANTS)
        self.variant = variant
        options = self.kernel_options()
        options.pop("bias_initializer"), options.pop("bias_regularizer")
        self.conv = keras.layers.Conv2D(1, self.kernel_size, padding="same", use_bias=False,
                                        data_format=self.data_format, name="conv", **options)
        self.norm = (batch_norm(self.data_format, 1e-5, 0.99, "norm") if variant == "paper" else None)

    def build(self, input_shape: Shape) -> None:
        self.lock_channels(input_shape)
        pooled = self.make_shape(input_shape[0], self.spatial_of(input_shape), 2)
        self.build_chain((self.conv, self.norm), pooled)

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        axis = self.channel_axis
        peak = ops.max(x, axis=axis, keepdims=True)
        avg = ops.mean(x, axis=axis, keepdims=True)
        pooled = ops.concatenate([peak, avg] if self.variant == "paper" else [avg, peak], axis=axis)
        logits = self.conv(pooled)
        if self.norm is not None:
            logits = self.norm(logits, training=training)
        return x * ops.sigmoid(logits)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(kernel_size=list(self.kernel_size), variant=self.variant)
        return config


@keras.saving.register_keras_serializable(package="leanconv")
class CBAM(LeanLayer):
    """Convolutional Block Attention Module: ``spatial_gate(channel_gate(x))``, same shape out.

    Re-weights a feature map by what (channel gate) and where (spatial gate) matters, for
    ``2*C*hidden (+hidden+C)`` + ``2*k*k (+2 BN)`` weights. ``variant='paper'`` (default: the
    authors' code, whose results are the published ones) or ``'common'``; see the module doc.
    Arguments as :class:`leanconv.layers.CBAM` (channels come from the input).
    """

    def __init__(self, reduction: int = 16, kernel_size: Any = 7, variant: str = "paper", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduction = check_positive_int(reduction, "reduction")
        self.kernel_size = _check_odd(kernel_size)
        check_choice(variant, "variant", CBAM_VARIANTS)
        self.variant = variant
        common = dict(data_format=self.data_format, **self.kernel_options())
        self.channel_gate = ChannelGate(reduction, variant, name="channel_gate", **common)
        self.spatial_gate = SpatialGate(self.kernel_size, variant, name="spatial_gate", **common)

    def build(self, input_shape: Shape) -> None:
        self.lock_channels(input_shape)
        self.build_chain((self.channel_gate, self.spatial_gate), tuple(input_shape))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        return self.spatial_gate(self.channel_gate(x), training=training)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(reduction=self.reduction, kernel_size=list(self.kernel_size), variant=self.variant)
        return config


__all__ = ["CBAM", "ChannelGate", "SpatialGate"]
