"""Blocks for Keras: the conv-norm-act unit, LPRNet's small basic block and DeepLab's ASPP.

Twins of :class:`leanconv.layers.SmallBasicBlock` and :class:`leanconv.layers.ASPP`, with the
same stage order, so weights carry over one to one (:func:`leanconv.keras.load_torch_weights`).
BatchNormalization defaults to PyTorch's ``BatchNorm2d`` settings (``norm_epsilon=1e-5``,
``norm_momentum=0.9``, which is PyTorch's momentum 0.1 in Keras' convention ``1 - m``) so that
a ported model keeps its output and its running-statistics update rate.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import keras

from leanconv._validate import check_divisible, check_positive_int, check_probability
from leanconv.keras._base import (
    LeanLayer,
    Shape,
    batch_norm,
    check_activation,
    check_bool,
    check_epsilon_momentum,
    ops,
    serialize_activation,
)


@keras.saving.register_keras_serializable(package="leanconv")
class ConvNormAct(keras.layers.Layer):
    """``activation(norm(conv(x)))``: a conv layer, an optional norm layer, an activation.

    The Keras counterpart of :class:`leanconv.layers.ConvNormAct`, holding any conv layer
    (``Conv2D``, ``SeparableConv2D``, ...) as ``conv`` and a norm (or None) as ``norm``.
    """

    def __init__(self, conv: keras.layers.Layer, norm: Optional[keras.layers.Layer] = None,
                 activation: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(conv, keras.layers.Layer):
            raise ValueError(f"conv={conv!r} must be a Keras layer")
        if norm is not None and not isinstance(norm, keras.layers.Layer):
            raise ValueError(f"norm={norm!r} must be a Keras layer or None")
        self.conv = conv
        self.norm = norm
        self.activation = check_activation(activation, "activation")

    def build(self, input_shape: Shape) -> None:
        LeanLayer.build_chain((self.conv, self.norm), tuple(input_shape))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y, training=training)
        return self.activation(y)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return tuple(self.conv.compute_output_shape(tuple(input_shape)))

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            conv=keras.saving.serialize_keras_object(self.conv),
            norm=keras.saving.serialize_keras_object(self.norm) if self.norm is not None else None,
            activation=serialize_activation(self.activation),
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "ConvNormAct":
        config = dict(config)
        config["conv"] = keras.saving.deserialize_keras_object(config["conv"])
        if config.get("norm") is not None:
            config["norm"] = keras.saving.deserialize_keras_object(config["norm"])
        return cls(**config)


class _NormActLayer(LeanLayer):
    """Shared options of the blocks: ``batch_norm`` on/off, its epsilon/momentum, ``activation``."""

    def __init__(self, batch_norm: bool, activation: Any, norm_epsilon: float, norm_momentum: float,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        self.activation = check_activation(activation, "activation")
        check_epsilon_momentum(norm_epsilon, norm_momentum)
        self.norm_epsilon, self.norm_momentum = float(norm_epsilon), float(norm_momentum)

    def unit(self, conv: keras.layers.Layer, name: str) -> ConvNormAct:
        """``conv`` + this layer's norm (when ``batch_norm``) + its activation, named ``name``."""
        bn = batch_norm(self.data_format, self.norm_epsilon, self.norm_momentum, "norm") if self.batch_norm else None
        return ConvNormAct(conv, bn, self.activation, name=name)

    def conv2d(self, filters: int, kernel_size: Any, name: str, use_bias: bool, **kwargs: Any) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=use_bias,
                                   data_format=self.data_format, name=name, **self.kernel_options(), **kwargs)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(batch_norm=self.batch_norm, activation=serialize_activation(self.activation),
                      norm_epsilon=self.norm_epsilon, norm_momentum=self.norm_momentum)
        return config


@keras.saving.register_keras_serializable(package="leanconv")
class SmallBasicBlock(_NormActLayer):
    """LPRNet's small basic block: 1x1 to ``filters/4``, 3x1, 1x3, 1x1 to ``filters``.

    A cheap stand-in for a 3x3 conv (size kept): the spatial work runs on a quarter of the
    channels and is split into 3x1 then 1x3 (seed S6). ``activation`` follows each of the
    first three convs (not the last, as in the original); ``batch_norm=True`` adds a norm after
    each of them, and their biases then go (the norm's shift replaces them). Weights
    ``C*q + 3q^2 + 3q^2 + q*filters`` (+ biases), ``q = filters // 4``.
    """

    def __init__(self, filters: int, activation: Any = "relu", batch_norm: bool = False,
                 norm_epsilon: float = 1e-5, norm_momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(batch_norm, activation, norm_epsilon, norm_momentum, **kwargs)
        self.filters = check_positive_int(filters, "filters")
        check_divisible(filters, "filters", 4, "4 (the inner width is filters // 4)")
        q = filters // 4
        inner_bias = not self.batch_norm
        self.reduce = self.unit(self.conv2d(q, 1, "conv", inner_bias), "reduce")
        self.conv_kx1 = self.unit(self.conv2d(q, (3, 1), "conv", inner_bias), "conv_kx1")
        self.conv_1xk = self.unit(self.conv2d(q, (1, 3), "conv", inner_bias), "conv_1xk")
        self.expand = self.conv2d(filters, 1, "expand", True)

    def build(self, input_shape: Shape) -> None:
        self.lock_channels(input_shape)
        self.build_chain((self.reduce, self.conv_kx1, self.conv_1xk, self.expand), tuple(input_shape))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        for unit in (self.reduce, self.conv_kx1, self.conv_1xk):
            x = unit(x, training=training)
        return self.expand(x)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self.make_shape(input_shape[0], self.spatial_of(input_shape), self.filters)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters)
        return config


@keras.saving.register_keras_serializable(package="leanconv")
class ASPPPooling(_NormActLayer):
    """ASPP's image-level branch: global mean, 1x1 conv (+norm, act), spread back over H x W.

    PyTorch upsamples the 1x1 map bilinearly; from a single pixel that gives a constant map,
    which is what broadcasting gives here.
    """

    def __init__(self, filters: int, use_bias: bool = False, batch_norm: bool = True, activation: Any = "relu",
                 norm_epsilon: float = 1e-5, norm_momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(batch_norm, activation, norm_epsilon, norm_momentum, **kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.use_bias = check_bool(use_bias, "use_bias")
        self.unit_layer = self.unit(self.conv2d(filters, 1, "conv", self.use_bias), "unit")

    def build(self, input_shape: Shape) -> None:
        channels = self.lock_channels(input_shape)
        self.build_chain((self.unit_layer,), self.make_shape(input_shape[0], (1, 1), channels))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        y = self.unit_layer(ops.mean(x, axis=axes, keepdims=True), training=training)
        shape = list(ops.shape(x))
        shape[self.channel_axis] = self.filters
        return ops.broadcast_to(y, shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self.make_shape(input_shape[0], self.spatial_of(input_shape), self.filters)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters, use_bias=self.use_bias)
        return config


def _check_rates(rates: Any) -> List[int]:
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or len(rates) == 0 or any(
        isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates
    ):
        raise ValueError(f"rates={rates!r} must be a non-empty sequence of ints >= 1")
    if len(set(rates)) != len(rates):
        raise ValueError(f"rates={rates!r} must be distinct (one atrous branch per rate)")
    return [int(r) for r in rates]


@keras.saving.register_keras_serializable(package="leanconv")
class ASPP(_NormActLayer):
    """Atrous spatial pyramid pooling (DeepLab): parallel 1x1, atrous 3x3 and image-pool branches.

    Each branch maps ``C -> filters`` at the input size; the ``1 + len(rates) (+1)`` results are
    concatenated in the order conv1x1, atrous{rate}..., pooling, projected 1x1 back to
    ``filters`` (conv, norm, act) and dropped out when ``dropout > 0``. ``separable=True`` makes
    every atrous branch a ``SeparableConv2D`` (the atrous separable conv of DeepLabv3+):
    ``C*9 + C*filters`` instead of ``C*filters*9`` weights per branch.
    """

    def __init__(
        self,
        filters: int,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        image_pooling: bool = True,
        use_bias: bool = False,
        batch_norm: bool = True,
        activation: Any = "relu",
        dropout: float = 0.0,
        norm_epsilon: float = 1e-5,
        norm_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_norm, activation, norm_epsilon, norm_momentum, **kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.rates = _check_rates(rates)
        self.separable = check_bool(separable, "separable")
        self.image_pooling = check_bool(image_pooling, "image_pooling")
        self.use_bias = check_bool(use_bias, "use_bias")
        self.dropout = check_probability(dropout, "dropout")

        branches = [self.unit(self.conv2d(filters, 1, "conv", self.use_bias), "conv1x1")]
        for rate in self.rates:
            branches.append(self.unit(self._atrous(rate), f"atrous{rate}"))
        if self.image_pooling:
            branches.append(ASPPPooling(
                filters, self.use_bias, self.batch_norm, self.activation, self.norm_epsilon, self.norm_momentum,
                data_format=self.data_format, name="pooling", **self.kernel_options(),
            ))
        self.branches = branches
        self.project = self.unit(self.conv2d(filters, 1, "conv", self.use_bias), "project")
        self.drop = keras.layers.Dropout(self.dropout, name="dropout") if self.dropout > 0 else None

    def _atrous(self, rate: int) -> keras.layers.Layer:
        if not self.separable:
            return self.conv2d(self.filters, 3, "conv", self.use_bias, dilation_rate=rate)
        options = self.kernel_options()
        kernel_init, kernel_reg = options.pop("kernel_initializer"), options.pop("kernel_regularizer")
        return keras.layers.SeparableConv2D(
            self.filters, 3, padding="same", dilation_rate=rate, use_bias=self.use_bias,
            data_format=self.data_format, depthwise_initializer=kernel_init, pointwise_initializer=kernel_init,
            depthwise_regularizer=kernel_reg, pointwise_regularizer=kernel_reg, name="conv", **options,
        )

    def build(self, input_shape: Shape) -> None:
        self.lock_channels(input_shape)
        shape = tuple(input_shape)
        for branch in self.branches:
            self.build_chain((branch,), shape)
        concat = self.make_shape(shape[0], self.spatial_of(shape), self.filters * len(self.branches))
        self.build_chain((self.project, self.drop), concat)

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        y = ops.concatenate([branch(x, training=training) for branch in self.branches], axis=self.channel_axis)
        y = self.project(y, training=training)
        return self.drop(y, training=training) if self.drop is not None else y

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self.make_shape(input_shape[0], self.spatial_of(input_shape), self.filters)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters, rates=list(self.rates), separable=self.separable,
                      image_pooling=self.image_pooling, use_bias=self.use_bias, dropout=self.dropout)
        return config


__all__ = ["ASPP", "ASPPPooling", "ConvNormAct", "SmallBasicBlock"]
