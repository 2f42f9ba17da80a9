"""Deploy and measure a model on real runtimes: PyTorch, onnxruntime and OpenVINO, per precision.

:func:`deploy` builds one target; :func:`measure_targets` times a model (or an original and
its conversion) on every available target and precision, checks each against fp32 PyTorch
eager, and reports the honest speedup: against the dense model at *its* best.
"""

from leanconv.deploy.target import PRECISIONS, TARGETS, TOLERANCES, Deployed, Target, deploy, get_target, register_target

__all__ = ["Deployed", "PRECISIONS", "TARGETS", "TOLERANCES", "Target", "deploy", "get_target", "register_target"]
