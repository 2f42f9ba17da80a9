"""Conversion of trained convs into efficient kinds: ``factorize`` (pure tensor math) and
``surgery`` (``convert`` a model, record a plan, ``apply_plan`` to rebuild it)."""

from leanconv.conversion.factorize import Factorization, asymmetric, asymmetric_depthwise, dsconv, grouped, tucker2
from leanconv.conversion.refitting import RefitReport, reestimate_bn, refit
from leanconv.conversion.surgery import ConversionResult, LayerReport, apply_plan, convert, save_plan

__all__ = ["RefitReport", "reestimate_bn", "refit", "ConversionResult", "Factorization", "LayerReport", "apply_plan", "asymmetric", "asymmetric_depthwise",
           "convert", "dsconv", "grouped", "save_plan", "tucker2"]
