"""The model zoo: the papers' architectures by name, plus any torchvision classifier as ``torchvision:NAME``."""

from . import alexnet, lenet, resnet_cifar, tiny, unet, vgg  # noqa: F401  (registration side effects)
from ._external import TIMM_PREFIX, trust_code
from ._registry import (
    TORCHVISION_PREFIX,
    ModelEntry,
    create_model,
    get_entry,
    input_shape_of,
    list_models,
    normalize_arch,
    register_model,
)

__all__ = [
    "TIMM_PREFIX",
    "TORCHVISION_PREFIX",
    "ModelEntry",
    "create_model",
    "get_entry",
    "input_shape_of",
    "list_models",
    "normalize_arch",
    "register_model",
    "trust_code",
]
