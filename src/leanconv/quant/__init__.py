"""Integer deployment: int8 quantization with exact integer reference layers.

``quantize(model, calib, dialect='apfixed'|'tflite')`` folds BN, calibrates and returns a
:class:`QuantizedModel` whose ``forward_int`` is the bit-exact reference for generated HLS
C++ (``leanconv.export.hls``). The dialects' arithmetic lives in :mod:`.dialects`, the
per-layer constants in :mod:`.requant`, the layers in :mod:`.layers`; :func:`hazard_report`
and :func:`accuracy_report` say what the integers cost.
"""

from leanconv.quant.dialects import ApFixed, TFLite, apfixed_raw, check_factor, make_dialect, quantize_multiplier
from leanconv.quant.hazards import HazardReport, LayerHazard, hazard_report
from leanconv.quant.layers import IntConv2d, IntLinear
from leanconv.quant.model import QuantizedModel
from leanconv.quant.observers import MinMaxObserver, PercentileObserver
from leanconv.quant.qparams import QParams, activation_qparams, quantize_weight
from leanconv.quant.quantization import quantize
from leanconv.quant.report import AccuracyReport, accuracy_report
from leanconv.quant.requant import ApFixedRequant, TFLiteRequant, make_requant

__all__ = [
    "AccuracyReport",
    "ApFixed",
    "ApFixedRequant",
    "HazardReport",
    "IntConv2d",
    "IntLinear",
    "LayerHazard",
    "MinMaxObserver",
    "PercentileObserver",
    "QParams",
    "QuantizedModel",
    "TFLite",
    "TFLiteRequant",
    "accuracy_report",
    "activation_qparams",
    "apfixed_raw",
    "check_factor",
    "hazard_report",
    "make_dialect",
    "make_requant",
    "quantize",
    "quantize_multiplier",
    "quantize_weight",
]
