"""Recovering a converted model's accuracy by knowledge distillation from the original, in one
process or under ``torchrun`` (DistributedDataParallel); ``python -m leanconv.train`` runs it."""

from leanconv.train.distillation import DEFAULT_ALPHA, DistillResult, EpochStats, LossParts, distill, distill_loss
from leanconv.train.distributed import DistInfo

__all__ = ["DEFAULT_ALPHA", "DistInfo", "DistillResult", "EpochStats", "LossParts", "distill", "distill_loss"]
