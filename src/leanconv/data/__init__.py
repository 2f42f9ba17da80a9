"""Datasets that need no download: scikit-learn's bundled digits (more loaders come with the demo)."""

from leanconv.data.digits import DigitsSplit, load_digits

__all__ = ["DigitsSplit", "load_digits"]
