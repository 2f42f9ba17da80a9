"""Imports every built-in target module; each registers its targets in :data:`leanconv.deploy.target.TARGETS`.

The modules import their runtime (onnxruntime, openvino) only when a target is built, so this
never fails for a runtime that is not installed.
"""

import importlib
import importlib.util

MODULES = ("leanconv.deploy.on_torch", "leanconv.deploy.on_onnxruntime", "leanconv.deploy.on_openvino")

for _name in MODULES:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)
