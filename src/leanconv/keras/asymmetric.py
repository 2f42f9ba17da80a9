"""Spatially separable conv for Keras: ``kh x 1`` then ``1 x kw`` (or the reverse), in series.

The Keras twin of :class:`leanconv.layers.AsymmetricConv2d` (seed S1: replace a 3x3 conv by a
3x1 and a 1x3 conv). ``conv_kx1`` takes the row parts of ``strides``/``dilation_rate``,
``conv_1xk`` the column parts; 'same' and 'valid' act per dimension so each stage gets the
layer's ``padding``. Only the second stage has a bias (a first-stage bias would leak into the
zero-padded border). Without the optional inner norm/activation the layer is exactly a
``kh x kw`` conv of rank <= ``mid_filters``, for ``kh + kw`` instead of ``kh*kw`` weights per
channel pair.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import keras

from leanconv._validate import check_choice, check_positive_int, check_positive_pair
from leanconv.keras._base import (
    TwoStageLayer,
    batch_norm,
    check_activation,
    check_bool,
    check_epsilon_momentum,
    check_padding,
    check_strides_dilation,
    serialize_activation,
)
from leanconv.rules import ASYMMETRIC_ORDERS


@keras.saving.register_keras_serializable(package="leanconv")
class AsymmetricConv2D(TwoStageLayer):
    """``(kh, 1)`` conv then ``(1, kw)`` conv (``order='kx1_first'``) or the reverse.

    Input ``(N, H, W, C)`` (channels_last), output ``(N, H', W', filters)`` with ``Conv2D``'s
    ``H', W'`` for ``kernel_size``, ``strides``, ``padding``, ``dilation_rate``. ``mid_filters``
    (default ``filters``) is the width between the stages, where ``mid_norm`` (a
    BatchNormalization) and ``mid_activation`` may sit; ``activation`` applies to the output.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any = 3,
        strides: Any = 1,
        padding: str = "valid",
        dilation_rate: Any = 1,
        use_bias: bool = True,
        mid_filters: Optional[int] = None,
        order: str = "kx1_first",
        mid_norm: bool = False,
        mid_activation: Any = None,
        activation: Any = None,
        norm_epsilon: float = 1e-5,
        norm_momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_pair(kernel_size, "kernel_size")
        self.strides, self.dilation_rate = check_strides_dilation(strides, dilation_rate)
        self.padding = check_padding(padding)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.mid_filters = filters if mid_filters is None else check_positive_int(mid_filters, "mid_filters")
        check_choice(order, "order", ASYMMETRIC_ORDERS)
        self.order = order
        self.mid_norm = check_bool(mid_norm, "mid_norm")
        self.mid_activation = check_activation(mid_activation, "mid_activation")
        self.activation = check_activation(activation, "activation")
        check_epsilon_momentum(norm_epsilon, norm_momentum)
        self.norm_epsilon, self.norm_momentum = float(norm_epsilon), float(norm_momentum)

        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        kx1_first = order == "kx1_first"
        stage = dict(padding=self.padding, data_format=self.data_format, **self.kernel_options())
        self.conv_kx1 = keras.layers.Conv2D(
            self.mid_filters if kx1_first else self.filters, (kh, 1), strides=(sh, 1), dilation_rate=(dh, 1),
            use_bias=self.use_bias and not kx1_first, activation=None if kx1_first else self.activation,
            name="conv_kx1", **stage,
        )
        self.conv_1xk = keras.layers.Conv2D(
            self.filters if kx1_first else self.mid_filters, (1, kw), strides=(1, sw), dilation_rate=(1, dw),
            use_bias=self.use_bias and kx1_first, activation=self.activation if kx1_first else None,
            name="conv_1xk", **stage,
        )
        self.norm = (batch_norm(self.data_format, self.norm_epsilon, self.norm_momentum, "norm")
                     if self.mid_norm else None)

    def _stages(self):
        first, second = ((self.conv_kx1, self.conv_1xk) if self.order == "kx1_first"
                         else (self.conv_1xk, self.conv_kx1))
        return first, second

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
            padding=self.padding, dilation_rate=list(self.dilation_rate), use_bias=self.use_bias,
            mid_filters=self.mid_filters, order=self.order, mid_norm=self.mid_norm,
            mid_activation=serialize_activation(self.mid_activation),
            activation=serialize_activation(self.activation),
            norm_epsilon=self.norm_epsilon, norm_momentum=self.norm_momentum,
        )
        return config


__all__ = ["AsymmetricConv2D"]
