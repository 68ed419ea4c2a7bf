"""Architectures that live outside the zoo: the user's own code by reference, and timm.

* ``package.module:factory`` or ``path/to/file.py:factory`` — a callable (function or class) returning an
  ``nn.Module``; ``--arch-kwargs`` are its keyword arguments. The reference and the kwargs are the architecture spec
  (never a pickle). Importing the code runs it, so it is an explicit act: a reference is imported only when the user
  named it in this process (``--arch REF`` of ``edgeprune train``), with ``--trust-code`` / ``$EDGEPRUNE_TRUST_CODE``,
  or with :func:`trust_code`. A checkpoint alone never makes edgeprune import code.
* ``timm:NAME`` — any timm model, always built with ``pretrained=False`` (nothing is downloaded); trained weights
  come from a checkpoint or ``--weights PATH``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..errors import ModelError

TIMM_PREFIX = "timm:"
TRUST_ENV = "EDGEPRUNE_TRUST_CODE"
_TRUSTED: set[str] = set()
_TIMM_REFUSED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                        "cache_dir")


def is_reference(name: str) -> bool:
    """``module:factory`` or ``file.py:factory`` (and not one of the library prefixes)."""
    if name.startswith(("torchvision:", TIMM_PREFIX)) or ":" not in name:
        return False
    target, _, attr = name.rpartition(":")
    return bool(target) and bool(attr) and attr.replace(".", "").replace("_", "").isalnum()


def _split(ref: str) -> tuple[str, str, bool]:
    target, _, attr = ref.rpartition(":")
    return target, attr, target.endswith(".py") or os.sep in target or "/" in target


_GIVEN: list[str] = []  # the --trust-code entries as given, for the refusal line


def _trust_key(target: str, is_file: bool) -> str:
    return str(Path(target).expanduser().resolve()) if is_file else target


def trust_code(*refs: str) -> None:
    """Allow importing these references (``module:factory``, ``module``, ``file.py[:factory]``) in this process."""
    for ref in refs:
        ref = ref.strip()
        if not ref:
            continue
        target = ref.rpartition(":")[0] if is_reference(ref) else ref
        is_file = target.endswith(".py") or "/" in target or os.sep in target
        if is_file and not Path(target).expanduser().is_file():
            raise ModelError(f"--trust-code {ref}: no such file {target}; give the path of the .py file the "
                             "checkpoint's architecture names (or its package.module)")
        _TRUSTED.add(_trust_key(target, is_file))
        _GIVEN.append(ref)


def _is_trusted(target: str, is_file: bool) -> bool:
    trusted = set(_TRUSTED)
    for item in os.environ.get(TRUST_ENV, "").split(","):
        item = item.strip()
        if item:
            t = item.rpartition(":")[0] if is_reference(item) else item
            trusted.add(_trust_key(t, t.endswith(".py") or "/" in t or os.sep in t))
    key = _trust_key(target, is_file)
    if is_file:
        return key in trusted
    return any(key == t or key.startswith(t + ".") for t in trusted)


def _import_file(path: Path):
    resolved = path.resolve()
    mod_name = f"edgeprune_user_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path} as Python code; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # pickling helpers and dataclasses look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise ModelError(f"importing {path} failed ({type(exc).__name__}: {first}); fix the file or check that its "
                         "own imports are installed") from None
    return module


def resolve_reference(ref: str) -> Callable[..., nn.Module]:
    """The factory a reference names, imported (only when trusted, see the module docstring)."""
    target, attr, is_file = _split(ref)
    if not _is_trusted(target, is_file):
        raise ModelError(
            f"the architecture is user code {ref!r}, and importing it runs that code; if you trust it, name it: "
            f"edgeprune --trust-code {target} COMMAND ... (or {TRUST_ENV}={target})"
            + (f"; the --trust-code given ({', '.join(_GIVEN)}) does not cover it" if _GIVEN else "")
        )
    if is_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelError(f"architecture file {path} not found (from {ref!r}, relative to {Path.cwd()}); run from "
                             "the folder it is relative to, or copy the file there")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(f"cannot import {target!r} for architecture {ref!r} ({exc}); install it or add its "
                             "folder to PYTHONPATH where you run edgeprune") from None
        except Exception as exc:
            raise ModelError(f"importing {target!r} failed ({type(exc).__name__}: {str(exc)[:160]}); fix the module"
                             ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
            raise ModelError(f"{target} has no {attr!r} (from {ref!r}); callables there: {', '.join(public) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{ref!r} is not callable; name a function or class that returns an nn.Module")
    return obj


def reference_builder(ref: str) -> Callable[..., nn.Module]:
    factory = resolve_reference(ref)

    def build(**kwargs: Any) -> nn.Module:
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise ModelError(f"cannot build {ref!r} with {kwargs}: {exc}; check --arch-kwargs") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"{ref!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    build.__signature__ = _signature(factory)  # type: ignore[attr-defined]
    return build


def _signature(fn) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def timm_builder(name: str) -> tuple[Callable[..., nn.Module], tuple[int, ...], int]:
    """(builder, default input shape, default class count) of timm model ``name``."""
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed; install the extra: pip install 'edgeprune[timm]'") from None
    if not timm.is_model(name):
        import difflib

        base = name.split(".")[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=6, cutoff=0.6)
        close = close or timm.list_models(f"*{base[:6]}*")[:6]
        hint = (f"similar: {', '.join(close)}" if close
                else "list them with python -c 'import timm; print(timm.list_models())'")
        raise ModelError(f"unknown timm model {name!r}; {hint}")
    cfg = timm.get_pretrained_cfg(name) if hasattr(timm, "get_pretrained_cfg") else None
    input_size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    classes = int(getattr(cfg, "num_classes", None) or 1000)

    def build(num_classes: int = classes, in_chans: int = 3, **kw: Any) -> nn.Module:
        refused = [k for k in _TIMM_REFUSED_KWARGS if k in kw]
        if refused:
            raise ModelError(f"timm option {refused[0]!r} is not accepted: edgeprune never downloads weights; "
                             "give trained weights with --weights PATH")
        try:
            # pretrained=False: nothing is ever downloaded.
            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
        except TypeError as exc:
            raise ModelError(f"cannot build timm:{name} with {kw}: {exc}; check --arch-kwargs") from None

    return build, input_size, classes
