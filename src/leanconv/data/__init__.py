"""Datasets that need no download: scikit-learn's bundled digits, CIFAR-10 python batches and
class-folder images in local folders, ``load_data(spec)`` resolving a ``--data`` string,
``as_splits`` (train/validation data in any form) and, in :mod:`leanconv.data.batches`, the one
data vocabulary every entry point reads (docs/data.md)."""

from leanconv.data.cifar10 import CIFAR10
from leanconv.data.digits import DigitsSplit, load_digits
from leanconv.data.errors import DataNotFoundError
from leanconv.data.folder import ImageFolder
from leanconv.data.normalize import PRESETS
from leanconv.data.spec import DataSplits, as_splits, load_data

__all__ = ["CIFAR10", "DataNotFoundError", "DataSplits", "DigitsSplit", "ImageFolder", "PRESETS", "as_splits", "load_data",
           "load_digits"]
