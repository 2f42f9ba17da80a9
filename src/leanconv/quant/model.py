"""A quantized model: a chain of integer layers with an integer-only reference forward.

:class:`QuantizedModel` holds the input quantization, the integer layers and the dialect.
``forward_int`` is the bit-exact reference the generated HLS C++ must match; ``__call__``
quantizes a float input, runs it and dequantizes the output, for accuracy comparisons.
``save``/``load`` keep everything (integer tensors, scales, settings) in one ``.pt`` file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from leanconv.quant.checks import check_fields, check_int, check_text
from leanconv.quant.dialects import ApFixed, Dialect, TFLite, dialect_from_dict
from leanconv.quant.layers import IntConv2d, IntLayer, IntLinear, layer_from_dict
from leanconv.quant.qparams import QParams
from leanconv.quant.requant import Stats
from leanconv._files import atomic_file


def _same_q(a: QParams, b: QParams) -> bool:
    return (a.zero_point, a.bits, a.signed) == (b.zero_point, b.bits, b.signed) and abs(a.scale - b.scale) <= 1e-12 * a.scale


def _check_layer(layer: IntLayer, index: int, dialect: Dialect) -> None:
    if not isinstance(layer, (IntConv2d, IntLinear)):
        raise ValueError(f"layers[{index}]={type(layer).__name__} must be an IntConv2d or IntLinear")
    try:
        layer.check()
    except ValueError as error:
        raise ValueError(f"layers[{index}]: {error}") from None
    if layer.requant.settings != dialect:
        raise ValueError(f"{layer.name}: its requantization settings {layer.requant.settings} differ from "
                         f"dialect={dialect}")


def _check_chain(layers: Sequence[IntLayer]) -> None:
    """Each layer takes the previous layer's channels and output quantization."""
    for previous, layer in zip(layers, layers[1:]):
        if layer.in_channels != previous.out_channels:
            raise ValueError(f"channel mismatch: {layer.name} takes {layer.in_channels} channels but "
                             f"{previous.name} gives {previous.out_channels}")
        if not _same_q(layer.in_q, previous.out_q):
            raise ValueError(f"{layer.name}'s input quantization {layer.in_q} differs from {previous.name}'s "
                             f"output {previous.out_q}")


def _check_input_shape(shape) -> None:
    """``(C,)`` or ``(C, H, W)`` (the input without its batch dimension): ints >= 1."""
    if not isinstance(shape, tuple) or len(shape) not in (1, 3):
        raise ValueError(f"input_shape={shape!r} must be (C,) or (C, H, W), ints >= 1")
    for index, size in enumerate(shape):
        check_int(size, f"input_shape[{index}]", 1, 1 << 20)


class QuantizedModel:
    """Integer layers run one after the other; ``input_q`` quantizes the float input.

    The chain is checked when built: each layer's input channels and input quantization must
    be the previous layer's output ones (a "channel mismatch" raises ``ValueError``).
    """

    def __init__(self, layers: Sequence[IntLayer], dialect: Dialect, input_q: Optional[QParams] = None,
                 input_shape: Optional[Sequence[int]] = None, source: str = "") -> None:
        self.layers: List[IntLayer] = list(layers)
        self.dialect = dialect
        self.input_q = input_q or (self.layers[0].in_q if self.layers else None)
        self.input_shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape
        self.source = source
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` unless the model is a valid chain of plain values.

        Every layer is re-checked (:meth:`IntConv2d.check`): names, shapes and integers reach
        generated code. Run when built and loaded, and again by the exporters.
        """
        if not self.layers:
            raise ValueError("layers must contain at least one integer layer")
        if not isinstance(self.dialect, (ApFixed, TFLite)):
            raise ValueError(f"dialect={self.dialect!r} must be an ApFixed or TFLite")
        self.dialect.check()
        for index, layer in enumerate(self.layers):
            _check_layer(layer, index, self.dialect)
        _check_chain(self.layers)
        if not isinstance(self.input_q, QParams):
            raise ValueError(f"input_q={self.input_q!r} must be a QParams")
        self.input_q.check()
        if not _same_q(self.input_q, self.layers[0].in_q):
            raise ValueError(f"input_q={self.input_q} differs from {self.layers[0].name}'s input quantization "
                             f"{self.layers[0].in_q}")
        if self.input_shape is not None:
            _check_input_shape(self.input_shape)
        check_text(self.source, "source")

    @property
    def output_q(self) -> QParams:
        return self.layers[-1].out_q

    def quantize_input(self, x: Tensor) -> Tensor:
        """Float input to int64 codes."""
        return self.input_q.quantize(x)

    def forward_all(self, x: Tensor, stats: Optional[List[Stats]] = None) -> List[Tensor]:
        """Every layer's integer output for integer input codes ``x`` (the golden data)."""
        outputs = []
        for index, layer in enumerate(self.layers):
            x = layer(x, None if stats is None else stats[index])
            outputs.append(x)
        return outputs

    def forward_int(self, x: Tensor) -> Tensor:
        """The last layer's integer output for integer input codes ``x``."""
        return self.forward_all(x)[-1]

    def __call__(self, x: Tensor) -> Tensor:
        """Quantize a float input, run the integer chain, dequantize the output."""
        return self.output_q.dequantize(self.forward_int(self.quantize_input(x)))

    def summary_rows(self) -> List[Dict[str, object]]:
        rows = []
        for layer in self.layers:
            rows.append({"layer": layer.name, "kind": layer.kind, "in": layer.in_channels, "out": layer.out_channels,
                         "in type": layer.in_q.ctype, "out type": layer.out_q.ctype,
                         "in scale": layer.in_q.scale, "out scale": layer.out_q.scale, "relu": layer.requant.relu})
        return rows

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        return {"format": "leanconv.quant/1", "dialect": self.dialect.to_dict(), "input_q": self.input_q.to_dict(),
                "input_shape": list(self.input_shape) if self.input_shape else None, "source": self.source,
                "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict) -> "QuantizedModel":
        """Inverse of :meth:`to_dict`. Everything is validated (a received file may be tampered
        with): a malformed entry raises ``ValueError`` naming the field and the rule."""
        if not isinstance(data, dict) or data.get("format") != "leanconv.quant/1":
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"format={found!r} must be 'leanconv.quant/1' (a file from QuantizedModel.save)")
        check_fields(data, "model", ["format", "dialect", "input_q", "layers"], ["input_shape", "source"])
        dialect = dialect_from_dict(data["dialect"])
        if not isinstance(data["layers"], list):
            raise ValueError(f"layers={type(data['layers']).__name__} must be a list of layer dicts")
        layers = [layer_from_dict(dialect, item, f"layers[{i}]") for i, item in enumerate(data["layers"])]
        input_q = QParams.from_dict(data["input_q"], "input_q")
        shape = data.get("input_shape")
        if shape is not None and not isinstance(shape, list):
            raise ValueError(f"input_shape={shape!r} must be a list of ints >= 1, or None")
        return cls(layers, dialect, input_q, shape, data.get("source", ""))

    def save(self, path: Union[str, os.PathLike], force: bool = False) -> Path:
        """Write to ``path`` atomically; refuses to replace an existing file unless ``force``."""
        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists: pass force=True to overwrite it")
        with atomic_file(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "QuantizedModel":
        """Read a file written by :meth:`save` (tensors and plain values only: ``weights_only``)."""
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))

    def __repr__(self) -> str:
        inner = "\n".join(f"  {layer!r}" for layer in self.layers)
        return f"QuantizedModel(dialect={self.dialect}, input={self.input_q.ctype} scale {self.input_q.scale:.4g},\n{inner}\n)"


__all__ = ["QuantizedModel"]
