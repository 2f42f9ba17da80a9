"""Reference models built from leanconv parts, each written as a readable settings table.

``create(name, **kwargs)`` builds one by name, ``list_models()`` lists the names, ``MODELS``
maps each name to its builder and ``DEFAULT_INPUTS`` gives the input shape(s) its published
figures refer to (batch 1), for analysis by name::

    with torch.device("meta"):
        model = create("mobilenet_v1")   # shapes only, no memory, for counting
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from torch import nn

from leanconv.models.deeplab import DeepLabV3PlusHead, deeplabv3plus_head
from leanconv.models.digits import DigitsCNN, digits_cnn
from leanconv.models.lpr import LPRNet, lprnet
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

_IMAGENET = ((1, 3, 224, 224),)
# Input shapes (one per forward argument) of each model with its default arguments.
DEFAULT_INPUTS: Dict[str, Tuple[Tuple[int, ...], ...]] = {
    "mobilenet_v1": _IMAGENET,
    "conv_mobilenet": _IMAGENET,
    "mobilenet_v2": _IMAGENET,
    "resnet18": _IMAGENET,
    "resnet50": _IMAGENET,
    "vgg16": _IMAGENET,
    "lprnet": ((1, 3, 24, 94),),
    # 512x512 image: ResNet-50 layer4 at output stride 16, layer1 at stride 4
    "deeplabv3plus_head": ((1, 2048, 32, 32), (1, 256, 128, 128)),
    "digits_cnn": ((1, 1, 32, 32),),
}


def list_models() -> List[str]:
    """The names ``create`` accepts, in registry order."""
    return list(MODELS)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the reference model called ``name`` with its builder's keyword arguments.

    Raises ValueError naming ``name`` and listing the known names when it is not one.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"name={name!r} is not a reference model; choose one of {list_models()}")
    return MODELS[name](**kwargs)


__all__ = [
    "BasicBlock",
    "DEFAULT_INPUTS",
    "DeepLabV3PlusHead",
    "DigitsCNN",
    "LPRNet",
    "MODELS",
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "VGG",
    "conv_mobilenet",
    "create",
    "deeplabv3plus_head",
    "digits_cnn",
    "list_models",
    "lprnet",
    "mobilenet_v1",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "vgg16",
]
