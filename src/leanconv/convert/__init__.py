"""Conversion of trained convs into efficient kinds. ``factorize`` holds the pure tensor math."""

from leanconv.convert.factorize import Factorization, asymmetric, asymmetric_depthwise, dsconv, grouped, tucker2

__all__ = ["Factorization", "asymmetric", "asymmetric_depthwise", "dsconv", "grouped", "tucker2"]
