"""What every leanconv Keras layer shares: the Keras import check, argument checks in leanconv's
style (``ValueError`` naming the argument, its value and the rule), data format handling, the
kernel initializer/regularizer options handed to inner convs, and the base class that builds
inner layers in order so that a ``.keras`` file reloads into built layers.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple


def require_keras() -> None:
    """Raise a clear ``ImportError`` when Keras 3 is not installed (it is an optional extra)."""
    try:
        import keras
    except ImportError as err:
        raise ImportError(
            "leanconv.keras needs Keras >= 3: pip install -c constraints.txt 'leanconv[keras]'. "
            "To run it on the PyTorch that leanconv already uses, set KERAS_BACKEND=torch "
            "before keras is first imported."
        ) from err
    major = int(str(keras.__version__).split(".")[0])
    if major < 3:
        raise ImportError(f"leanconv.keras needs Keras >= 3, found keras {keras.__version__}")


require_keras()

import keras  # noqa: E402
from keras import ops  # noqa: E402

from leanconv._validate import check_choice, check_positive_pair  # noqa: E402
from leanconv.padding import conv_output_size  # noqa: E402

IntPair = int | Tuple[int, int]
Shape = Tuple[Optional[int], ...]

PADDINGS = ("same", "valid")
DATA_FORMATS = ("channels_last", "channels_first")


def check_padding(padding: Any, name: str = "padding") -> str:
    """Keras' padding vocabulary: ``'same'`` (TF rule, extra pixel right/bottom) or ``'valid'``."""
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"{name}={padding!r} must be 'same' or 'valid'")
    return padding.lower()


def check_data_format(data_format: Optional[str]) -> str:
    """``None`` means ``keras.config.image_data_format()`` (channels_last unless configured)."""
    if data_format is None:
        return keras.config.image_data_format()
    check_choice(data_format, "data_format", DATA_FORMATS)
    return data_format


def check_strides_dilation(strides: Any, dilation_rate: Any) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Normalize ``strides`` and ``dilation_rate``; Keras convs reject both > 1 at once."""
    s = check_positive_pair(strides, "strides")
    d = check_positive_pair(dilation_rate, "dilation_rate")
    if max(s) > 1 and max(d) > 1:
        raise ValueError(
            f"strides={strides!r} and dilation_rate={dilation_rate!r} cannot both be > 1 "
            "(Keras convolutions do not support it)"
        )
    return s, d


def check_activation(value: Any, name: str) -> Any:
    """Resolve a Keras activation identifier (``None``, a name, a callable)."""
    try:
        return keras.activations.get(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name}={value!r} must be None, a Keras activation name or a callable") from err


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a bool")
    return value


def check_epsilon_momentum(epsilon: Any, momentum: Any) -> None:
    """BatchNormalization options: ``norm_epsilon > 0`` and ``0 <= norm_momentum < 1``."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"norm_epsilon={epsilon!r} must be a number > 0")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"norm_momentum={momentum!r} must be a number in [0, 1)")


def conv_length(size: Optional[int], kernel: int, stride: int, dilation: int, padding: str) -> Optional[int]:
    """Output length of one conv dimension (unknown stays unknown)."""
    return None if size is None else conv_output_size(size, kernel, stride, padding, dilation)


def serialize_activation(fn: Any) -> Any:
    return keras.activations.serialize(fn) if fn is not None else None


class LeanLayer(keras.layers.Layer):
    """Base of the leanconv Keras layers: 4-D input, ``data_format``, kernel options.

    Subclasses create their inner layers in ``__init__`` (or ``_make_layers`` when they need
    the input channel count) and build them in ``build``; ``kernel_options()`` gives the
    initializers and regularizers every inner conv or dense layer receives.
    """

    def __init__(
        self,
        data_format: Optional[str] = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_format = check_data_format(data_format)
        self.channel_axis = -1 if self.data_format == "channels_last" else 1
        self.kernel_initializer = self._resolve(keras.initializers, kernel_initializer, "kernel_initializer")
        self.bias_initializer = self._resolve(keras.initializers, bias_initializer, "bias_initializer")
        self.kernel_regularizer = self._resolve(keras.regularizers, kernel_regularizer, "kernel_regularizer")
        self.bias_regularizer = self._resolve(keras.regularizers, bias_regularizer, "bias_regularizer")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @staticmethod
    def _resolve(module: Any, value: Any, name: str) -> Any:
        try:
            return module.get(value)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name}={value!r} is not a valid Keras {module.__name__.split('.')[-1]} identifier") from err

    def kernel_options(self) -> Dict[str, Any]:
        """Initializers and regularizers for an inner ``Conv2D`` or ``Dense`` layer."""
        return dict(
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
        )

    def channels_of(self, shape: Sequence[Optional[int]]) -> int:
        """Channel count of an input shape; a 4-D shape with a known channel axis is required."""
        if len(shape) != 4 or shape[self.channel_axis] is None:
            raise ValueError(
                f"{type(self).__name__}: input must be 4-D with a known channel axis "
                f"({self.data_format}), got shape {tuple(shape)}"
            )
        return int(shape[self.channel_axis])

    def spatial_of(self, shape: Sequence[Optional[int]]) -> Tuple[Optional[int], Optional[int]]:
        return (shape[1], shape[2]) if self.data_format == "channels_last" else (shape[2], shape[3])

    def make_shape(self, batch: Optional[int], hw: Sequence[Optional[int]], channels: int) -> Shape:
        if self.data_format == "channels_last":
            return (batch, hw[0], hw[1], channels)
        return (batch, channels, hw[0], hw[1])

    def lock_channels(self, shape: Sequence[Optional[int]]) -> int:
        """After build: inputs must keep this rank and channel count (Keras checks before compute)."""
        channels = self.channels_of(shape)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self.channel_axis: channels})
        return channels

    @staticmethod
    def build_chain(layers: Iterable[Optional[keras.layers.Layer]], shape: Shape) -> Shape:
        """Build ``layers`` one after the other from ``shape``; return the final shape."""
        for layer in layers:
            if layer is None:
                continue
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            data_format=self.data_format,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=(keras.regularizers.serialize(self.kernel_regularizer)
                                if self.kernel_regularizer is not None else None),
            bias_regularizer=(keras.regularizers.serialize(self.bias_regularizer)
                              if self.bias_regularizer is not None else None),
        )
        return config


class TwoStageLayer(LeanLayer):
    """A layer made of two convs in series with an optional norm and activation between them
    (asymmetric, separable transposed). Subclasses set ``norm`` and ``mid_activation`` (either
    may be None) and define ``_stages()`` returning ``(first, second)`` in their stage order."""

    def build(self, input_shape: Shape) -> None:
        self.lock_channels(input_shape)
        first, second = self._stages()
        self.build_chain((first, self.norm, second), tuple(input_shape))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        first, second = self._stages()
        y = first(x)
        if self.norm is not None:
            y = self.norm(y, training=training)
        if self.mid_activation is not None:
            y = self.mid_activation(y)
        return second(y)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        first, second = self._stages()
        return tuple(second.compute_output_shape(first.compute_output_shape(tuple(input_shape))))


def batch_norm(data_format: str, epsilon: float, momentum: float, name: str) -> keras.layers.BatchNormalization:
    """A BatchNormalization on the channel axis of ``data_format``."""
    axis = -1 if data_format == "channels_last" else 1
    return keras.layers.BatchNormalization(axis=axis, epsilon=epsilon, momentum=momentum, name=name)


__all__ = [
    "LeanLayer",
    "TwoStageLayer",
    "batch_norm",
    "check_activation",
    "check_bool",
    "check_data_format",
    "check_epsilon_momentum",
    "check_padding",
    "check_strides_dilation",
    "conv_length",
    "ops",
    "require_keras",
    "serialize_activation",
]
