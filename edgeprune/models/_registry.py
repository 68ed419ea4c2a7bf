"""The model registry: architecture names → builders, with their default input shape and class count.

An architecture is data: ``{"name": "lenet5", "kwargs": {"num_classes": 10}}``. Every model built here carries that
spec as ``model.edgeprune_arch`` so a checkpoint can rebuild it without pickling modules.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any, Callable

import torch.nn as nn

from ..errors import ModelError

TORCHVISION_PREFIX = "torchvision:"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    """Default input shape of one sample (C, H, W) or (features,)."""
    num_classes: int
    description: str
    test_only: bool = False
    """Tiny models used by the test-suite; hidden from user listings."""
    task: str = "classification"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    description: str = "",
    test_only: bool = False,
    task: str = "classification",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a builder to the zoo under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = ModelEntry(name, fn, tuple(input_shape), num_classes, doc, test_only, task)
        return fn

    return wrap


def list_models(include_test: bool = False) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if include_test or not e.test_only)


def get_entry(name: str) -> ModelEntry:
    from ._external import TIMM_PREFIX, is_reference, reference_builder, timm_builder

    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_entry(name[len(TORCHVISION_PREFIX):])
    if name.startswith(TIMM_PREFIX):
        build, shape, classes = timm_builder(name[len(TIMM_PREFIX):])
        return ModelEntry(name, build, shape, classes, f"timm {name[len(TIMM_PREFIX):]}")
    if is_reference(name):
        # Input shape and class count come from the data (and --arch-kwargs), not from a registry.
        return ModelEntry(name, reference_builder(name), (), 0, f"user code {name}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())
        raise ModelError(
            f"unknown architecture {name!r}; choose one of: {known}, torchvision:NAME (e.g. torchvision:resnet18), "
            "timm:NAME, or your own code as package.module:factory or path/to/file.py:factory"
        ) from None


def normalize_arch(arch: str | dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Return the canonical spec ``{"name", "kwargs"}`` for a name or spec plus extra keyword arguments."""
    if isinstance(arch, str):
        spec: dict[str, Any] = {"name": arch, "kwargs": {}}
    elif isinstance(arch, dict) and isinstance(arch.get("name"), str):
        spec = copy.deepcopy(arch)
        spec.setdefault("kwargs", {})
    else:
        raise ModelError(f"architecture must be a name or a {{'name': ..., 'kwargs': ...}} spec, got {arch!r}")
    spec["kwargs"].update({k: v for k, v in kwargs.items() if v is not None})
    return spec


def create_model(arch: str | dict[str, Any], **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or spec; extra keyword arguments (e.g. ``num_classes``) override the spec's."""
    spec = normalize_arch(arch, **kwargs)
    entry = get_entry(spec["name"])
    try:
        model = entry.builder(**spec["kwargs"])
    except TypeError as exc:
        raise ModelError(f"cannot build {spec['name']!r} with {spec['kwargs']}: {exc}") from None
    model.edgeprune_arch = spec  # type: ignore[assignment]
    return model


def input_shape_of(arch: str | dict[str, Any]) -> tuple[int, ...]:
    """Default single-sample input shape of an architecture (honours an ``input_shape`` kwarg)."""
    spec = normalize_arch(arch)
    if "input_shape" in spec["kwargs"]:
        return tuple(spec["kwargs"]["input_shape"])
    entry = get_entry(spec["name"])
    if not entry.input_shape:
        raise ModelError(f"the input shape of {spec['name']!r} is not known to edgeprune; pass --input-shape "
                         "(e.g. 3,32,32) or use a checkpoint that records it")
    for key in ("in_channels", "in_chans"):
        if key in spec["kwargs"] and len(entry.input_shape) == 3:
            return (int(spec["kwargs"][key]),) + entry.input_shape[1:]
    return entry.input_shape


def _torchvision_entry(tv_name: str) -> ModelEntry:
    try:
        import torchvision.models as tvm
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise ModelError(f"torchvision is not importable ({exc}); reinstall edgeprune's dependencies") from None
    available = tvm.list_models(module=tvm)
    if tv_name not in available:
        raise ModelError(
            f"unknown torchvision classification model {tv_name!r}; e.g. resnet18, mobilenet_v2, vgg16_bn "
            f"({len(available)} available: python -c 'import torchvision; print(torchvision.models.list_models())')"
        )

    def build(num_classes: int = 1000, **kw: Any) -> nn.Module:
        # weights=None: nothing is ever downloaded; users bring trained weights in a checkpoint.
        return tvm.get_model(tv_name, weights=None, num_classes=num_classes, **kw)

    side = 299 if tv_name == "inception_v3" else 224
    return ModelEntry(TORCHVISION_PREFIX + tv_name, build, (3, side, side), 1000, f"torchvision {tv_name}")
