"""Upsampling layers for Keras: depthwise (separable) transposed conv and resize-convolution.

Keras' ``Conv2DTranspose`` has no ``groups``, so a depthwise transposed conv does not exist
there (seed S10 asks for separable upsampling in Keras). :class:`DepthwiseConv2DTranspose`
computes it with backend-agnostic ops: insert ``stride - 1`` zeros between input pixels, pad,
and run a stride-1 depthwise conv with the spatially flipped kernel. That is exactly the
transposed conv (the adjoint of a strided depthwise conv), for ``C*m*kh*kw`` weights, at the
price of running the depthwise conv on the zero-inserted map (``s_h*s_w`` times the MACs a
native grouped transposed conv would need; the depthwise stage is the cheap one of the pair).

Output size per dimension, as ``Conv2DTranspose``: ``'same'`` gives ``in * stride``, with the
crop placed by the TensorFlow rule (the transposed conv is the adjoint of a 'same' conv, which
pads its extra pixel right/bottom), as :class:`leanconv.layers.ConvTranspose2d` does;
``'valid'`` gives ``(in-1)*stride + max(k_eff, stride)``, or ``(in-1)*stride + k_eff +
output_padding`` when ``output_padding`` is given (``k_eff = d*(k-1)+1``). On one channel
the result equals Keras' ``Conv2DTranspose`` (tested for kernels 1-5, strides 1-3, both
paddings). PyTorch's ``nn.ConvTranspose2d`` has no 'same'; its usual stand-in
``padding=ceil((k-s)/2), output_padding=(k-s) % 2`` gives the same size but, for an odd
``k - s``, a window one pixel later (PyTorch adds output_padding only at the end).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import keras

from leanconv._validate import check_choice, check_positive_int, check_positive_pair, pair
from leanconv.keras._base import (
    LeanLayer,
    Shape,
    TwoStageLayer,
    batch_norm,
    check_activation,
    check_bool,
    check_epsilon_momentum,
    check_padding,
    check_strides_dilation,
    conv_length,
    ops,
    serialize_activation,
)
from leanconv.keras.asymmetric import AsymmetricConv2D
from leanconv import rules
from leanconv.rules import UPSAMPLE_MODES
from leanconv.padding import effective_kernel

RESIZE_CONVS = ("dense", "dsconv", "asymmetric")
"""Conv kinds :class:`ResizeConv2D` can run after the resize (names of :mod:`leanconv.kinds`)."""


def transposed_length(size: Optional[int], kernel: int, stride: int, dilation: int, padding: str,
                      output_padding: Optional[int]) -> Optional[int]:
    """Output length of one transposed-conv dimension (``Conv2DTranspose``'s rule)."""
    if size is None:
        return None
    k = effective_kernel(kernel, dilation)
    if padding == "same":
        return size * stride
    extra = max(k, stride) - k if output_padding is None else output_padding
    return (size - 1) * stride + k + extra


def _same_crop_before(kernel: int, stride: int, dilation: int) -> int:
    """Rows the TF-rule 'same' transposed conv drops at the start of the full output."""
    return max(effective_kernel(kernel, dilation) - stride, 0) // 2


def _take(x: Any, axis: int, start: int, stop: Optional[int]) -> Any:
    index = [slice(None)] * axis + [slice(start, stop)]
    return x[tuple(index)]


def _zero_insert_pad(x: Any, axis: int, stride: int, before: int, after: int) -> Any:
    """Put ``stride - 1`` zeros after every element along ``axis``, then pad (or crop when
    negative) ``before`` / ``after`` elements; ``after`` counts from the last input element."""
    ndim = len(x.shape)
    if stride > 1:
        shape = list(ops.shape(x))
        widths = [[0, 0]] * (ndim + 1)
        widths[axis + 1] = [0, stride - 1]
        x = ops.pad(ops.expand_dims(x, axis + 1), widths)
        shape[axis] = shape[axis] * stride
        x = ops.reshape(x, shape)
        after -= stride - 1  # the reshape already left stride - 1 zeros after the last element
    if before < 0:
        x, before = _take(x, axis, -before, None), 0
    if after < 0:
        x, after = _take(x, axis, 0, after), 0
    if before or after:
        widths = [[0, 0]] * ndim
        widths[axis] = [before, after]
        x = ops.pad(x, widths)
    return x


@keras.saving.register_keras_serializable(package="leanconv")
class DepthwiseConv2DTranspose(LeanLayer):
    """Depthwise transposed conv: each input channel gets ``depth_multiplier`` transposed filters.

    ``kernel`` has ``DepthwiseConv2D``'s layout ``(kh, kw, C, m)``; output channel ``c*m + j``
    is filter ``j`` of channel ``c`` (PyTorch ``ConvTranspose2d(C, C*m, groups=C)``, weight
    ``(C, m, kh, kw)``). Output size as ``Conv2DTranspose`` (see the module doc).
    """

    def __init__(
        self,
        kernel_size: Any,
        strides: Any = 1,
        padding: str = "valid",
        output_padding: Any = None,
        dilation_rate: Any = 1,
        depth_multiplier: int = 1,
        use_bias: bool = True,
        activation: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel_size = check_positive_pair(kernel_size, "kernel_size")
        self.strides, self.dilation_rate = check_strides_dilation(strides, dilation_rate)
        self.padding = check_padding(padding)
        self.output_padding = _check_output_padding(output_padding, self.padding, self.strides, self.dilation_rate)
        self.depth_multiplier = check_positive_int(depth_multiplier, "depth_multiplier")
        self.use_bias = check_bool(use_bias, "use_bias")
        self.activation = check_activation(activation, "activation")

    def build(self, input_shape: Shape) -> None:
        channels = self.lock_channels(input_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=(*self.kernel_size, channels, self.depth_multiplier),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
        )
        self.bias = (self.add_weight(name="bias", shape=(channels * self.depth_multiplier,),
                                     initializer=self.bias_initializer, regularizer=self.bias_regularizer)
                     if self.use_bias else None)

    def call(self, x: Any) -> Any:
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for i, axis in enumerate(axes):
            k, s, d = self.kernel_size[i], self.strides[i], self.dilation_rate[i]
            k_eff = effective_kernel(k, d)
            full_pad = k_eff - 1  # a valid stride-1 conv on this padding gives the full output
            if self.padding == "same":
                crop = _same_crop_before(k, s, d)
                before, after = full_pad - crop, s - 1 + crop
            else:
                op = max(k_eff, s) - k_eff if self.output_padding is None else self.output_padding[i]
                before, after = full_pad, full_pad + op
            x = _zero_insert_pad(x, axis, s, before, after)
        kernel = ops.flip(ops.flip(self.kernel, 0), 1)
        y = ops.depthwise_conv(x, kernel, strides=1, padding="valid", data_format=self.data_format,
                               dilation_rate=self.dilation_rate)
        if self.bias is not None:
            bias = self.bias if self.data_format == "channels_last" else ops.reshape(self.bias, (-1, 1, 1))
            y = y + bias
        return self.activation(y)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        channels = self.channels_of(input_shape)
        hw = tuple(
            transposed_length(n, self.kernel_size[i], self.strides[i], self.dilation_rate[i], self.padding,
                              None if self.output_padding is None else self.output_padding[i])
            for i, n in enumerate(self.spatial_of(input_shape))
        )
        return self.make_shape(input_shape[0], hw, channels * self.depth_multiplier)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            kernel_size=list(self.kernel_size), strides=list(self.strides), padding=self.padding,
            output_padding=None if self.output_padding is None else list(self.output_padding),
            dilation_rate=list(self.dilation_rate), depth_multiplier=self.depth_multiplier,
            use_bias=self.use_bias, activation=serialize_activation(self.activation),
        )
        return config


def _check_output_padding(output_padding: Any, padding: str, strides: Tuple[int, int],
                          dilation: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    if output_padding is None:
        return None
    if padding == "same":
        raise ValueError(f"output_padding={output_padding!r} must be None with padding='same' (output in*stride)")
    op = pair(output_padding, "output_padding")
    if any(o < 0 or o >= max(s, d) for o, s, d in zip(op, strides, dilation)):
        raise ValueError(
            f"output_padding={output_padding!r} must be >= 0 and smaller than strides or dilation_rate "
            f"(strides={strides}, dilation_rate={dilation})"
        )
    return op


@keras.saving.register_keras_serializable(package="leanconv")
class DepthwiseSeparableConv2DTranspose(TwoStageLayer):
    """Transposed conv factorized into a depthwise transposed conv and a 1x1 conv (either order).

    ``order='depthwise_first'``: ``depthwise`` (:class:`DepthwiseConv2DTranspose`, ``C -> C*m``,
    no bias, with strides/padding/output_padding/dilation), optional ``norm`` and
    ``mid_activation``, then ``pointwise`` (``Conv2D`` 1x1 to ``filters``, with the bias).
    ``order='pointwise_first'``: the 1x1 (no bias) runs at the input resolution first, then the
    depthwise transposed conv ``filters -> filters`` with the bias (``depth_multiplier`` 1);
    when upsampling by ``s`` that is ``s*s`` times fewer 1x1 MACs.
    Twin of :class:`leanconv.layers.DepthwiseSeparableConvTranspose2d`.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = 1,
        padding: str = "valid",
        output_padding: Any = None,
        dilation_rate: Any = 1,
        depth_multiplier: int = 1,
        order: str = "depthwise_first",
        use_bias: bool = True,
        mid_norm: bool = False,
        mid_activation: Any = None,
        activation: Any = None,
        norm_epsilon: float = 1e-5,
        norm_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.order = rules.check_separable_order(order)
        self.depth_multiplier = rules.check_transpose_multiplier(depth_multiplier, order)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.mid_norm = check_bool(mid_norm, "mid_norm")
        self.mid_activation = check_activation(mid_activation, "mid_activation")
        self.activation = check_activation(activation, "activation")
        check_epsilon_momentum(norm_epsilon, norm_momentum)
        self.norm_epsilon, self.norm_momentum = float(norm_epsilon), float(norm_momentum)
        depthwise_first = order == "depthwise_first"
        common = dict(data_format=self.data_format, **self.kernel_options())
        self.depthwise = DepthwiseConv2DTranspose(
            kernel_size, strides, padding, output_padding, dilation_rate, depth_multiplier,
            use_bias=self.use_bias and not depthwise_first, activation=None if depthwise_first else self.activation,
            name="depthwise", **common,
        )
        self.pointwise = keras.layers.Conv2D(
            filters, 1, use_bias=self.use_bias and depthwise_first,
            activation=self.activation if depthwise_first else None, name="pointwise", **common,
        )
        self.norm = (batch_norm(self.data_format, self.norm_epsilon, self.norm_momentum, "norm")
                     if self.mid_norm else None)

    def _stages(self):
        if self.order == "depthwise_first":
            return self.depthwise, self.pointwise
        return self.pointwise, self.depthwise

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        dw = self.depthwise
        config.update(
            filters=self.filters, kernel_size=list(dw.kernel_size), strides=list(dw.strides), padding=dw.padding,
            output_padding=None if dw.output_padding is None else list(dw.output_padding),
            dilation_rate=list(dw.dilation_rate), depth_multiplier=self.depth_multiplier, order=self.order,
            use_bias=self.use_bias, mid_norm=self.mid_norm, mid_activation=serialize_activation(self.mid_activation),
            activation=serialize_activation(self.activation), norm_epsilon=self.norm_epsilon,
            norm_momentum=self.norm_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package="leanconv")
class ResizeConv2D(LeanLayer):
    """Resize-convolution: ``upsample`` (``UpSampling2D``) then ``conv`` of a chosen kind.

    Input ``(N, H, W, C)``; the resize gives ``(N, s_h*H, s_w*W, C)`` and the conv runs there
    (``s_h*s_w`` times its MACs at ``H x W``). With the default ``padding='same'`` and
    ``strides=1`` the output is exactly ``size`` times the input. Every output pixel sees the
    same number of kernel taps, so no checkerboard pattern appears (unlike a strided transposed
    conv whose kernel is not a multiple of its stride). ``conv``: ``'dense'`` (``Conv2D``),
    ``'dsconv'`` (``SeparableConv2D``) or ``'asymmetric'`` (:class:`AsymmetricConv2D`).
    Twin of :class:`leanconv.layers.ResizeConv2d` (``interpolation`` is its ``mode``, with
    ``align_corners`` left at its default).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any = 3,
        strides: Any = 1,
        padding: str = "same",
        dilation_rate: Any = 1,
        use_bias: bool = True,
        size: Any = 2,
        interpolation: str = "nearest",
        conv: str = "dense",
        activation: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_pair(kernel_size, "kernel_size")
        self.strides, self.dilation_rate = check_strides_dilation(strides, dilation_rate)
        self.padding = check_padding(padding)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.size = check_positive_pair(size, "size")
        check_choice(interpolation, "interpolation", UPSAMPLE_MODES)
        self.interpolation = interpolation
        check_choice(conv, "conv", RESIZE_CONVS)
        self.conv_kind = conv
        self.activation = check_activation(activation, "activation")
        self.upsample = keras.layers.UpSampling2D(self.size, data_format=self.data_format,
                                                  interpolation=interpolation, name="upsample")
        self.conv = self._make_conv()

    def _make_conv(self) -> keras.layers.Layer:
        args = dict(strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
                    use_bias=self.use_bias, activation=self.activation, data_format=self.data_format, name="conv")
        options = self.kernel_options()
        if self.conv_kind == "dense":
            return keras.layers.Conv2D(self.filters, self.kernel_size, **args, **options)
        if self.conv_kind == "asymmetric":
            return AsymmetricConv2D(self.filters, self.kernel_size, **args, **options)
        kernel_init, kernel_reg = options.pop("kernel_initializer"), options.pop("kernel_regularizer")
        return keras.layers.SeparableConv2D(
            self.filters, self.kernel_size, depthwise_initializer=kernel_init, pointwise_initializer=kernel_init,
            depthwise_regularizer=kernel_reg, pointwise_regularizer=kernel_reg, **args, **options,
        )

    def build(self, input_shape: Shape) -> None:
        self.lock_channels(input_shape)
        self.build_chain((self.upsample, self.conv), tuple(input_shape))

    def call(self, x: Any) -> Any:
        return self.conv(self.upsample(x))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        up = tuple(None if n is None else n * s for n, s in zip(self.spatial_of(input_shape), self.size))
        hw = tuple(conv_length(n, self.kernel_size[i], self.strides[i], self.dilation_rate[i], self.padding)
                   for i, n in enumerate(up))
        return self.make_shape(input_shape[0], hw, self.filters)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
            padding=self.padding, dilation_rate=list(self.dilation_rate), use_bias=self.use_bias,
            size=list(self.size), interpolation=self.interpolation, conv=self.conv_kind,
            activation=serialize_activation(self.activation),
        )
        return config


__all__ = [
    "DepthwiseConv2DTranspose",
    "DepthwiseSeparableConv2DTranspose",
    "RESIZE_CONVS",
    "ResizeConv2D",
    "transposed_length",
]
