"""Reference models built from leanconv parts, each a readable settings table.

``create(name, **kwargs)`` builds one; ``list_models()`` names them all.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from leanconv.models.deeplab import DeepLabV3PlusHead, deeplabv3plus_head
from leanconv.models.digits import DigitsCNN, digits_cnn
from leanconv.models.lprnet import LPRNet, lprnet
from leanconv.models.mobilenet import MobileNetV1, MobileNetV2, conv_mobilenet, mobilenet_v1, mobilenet_v2
from leanconv.models.resnet import BasicBlock, ResNet, resnet18, resnet50
from leanconv.models.vgg import VGG, vgg16

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "conv_mobilenet": conv_mobilenet,
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "lprnet": lprnet,
    "deeplabv3plus_head": deeplabv3plus_head,
    "digits_cnn": digits_cnn,
}

# The input each model expects, for profiling by name.
DEFAULT_INPUTS: Dict[str, tuple] = {
    "mobilenet_v1": ((1, 3, 224, 224),), "conv_mobilenet": ((1, 3, 224, 224),),
    "mobilenet_v2": ((1, 3, 224, 224),), "resnet18": ((1, 3, 224, 224),), "resnet50": ((1, 3, 224, 224),),
    "vgg16": ((1, 3, 224, 224),), "lprnet": ((1, 3, 24, 94),),
    "deeplabv3plus_head": ((1, 2048, 32, 32), (1, 256, 128, 128)), "digits_cnn": ((1, 1, 32, 32),),
}


def list_models() -> List[str]:
    return list(MODELS)


def create(name: str, **kwargs) -> nn.Module:
    """Build the reference model ``name`` (ValueError listing the names when unknown)."""
    if name not in MODELS:
        raise ValueError(f"name={name!r} is not a reference model; choose one of {list_models()}")
    return MODELS[name](**kwargs)


__all__ = [
    "BasicBlock", "DEFAULT_INPUTS", "DeepLabV3PlusHead", "DigitsCNN", "LPRNet", "MODELS", "MobileNetV1",
    "MobileNetV2", "ResNet", "VGG", "create", "list_models",
]
