"""Safe checkpoints: a dict that ``torch.load(path, weights_only=True)`` reads, holding the architecture as data.

Layout::

    {"format": "edgeprune-checkpoint", "version": 1,
     "arch": {"name": "lenet5", "kwargs": {...}, ...},   # zoo spec; pruned models add their surgery spec
     "state_dict": {...}, "meta": {"dataset": ..., "input_shape": [...], "top1_error": ..., "seed": ..., ...}}

Plain ``state_dict`` files load when the architecture is given. Full-module pickles load only with
``trust_pickle=True`` (they can run arbitrary code). TorchScript and ONNX files are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import _io
from .errors import CheckpointError, ModelError
from .models import create_model, normalize_arch

FORMAT = "edgeprune-checkpoint"
VERSION = 1

# Keys an arch spec may carry beyond the zoo's {"name", "kwargs"}: key -> module that registers its rebuild hook.
_ARCH_EXTENSION_MODULES = {"surgery": "edgeprune.surgery"}
_ARCH_EXTENSIONS: dict[str, Callable[[nn.Module, Any], nn.Module]] = {}


def register_arch_extension(key: str, rebuild: Callable[[nn.Module, Any], nn.Module]) -> None:
    """Let a stage (e.g. surgery) turn a freshly built zoo model into the saved shape from ``arch[key]``."""
    _ARCH_EXTENSIONS[key] = rebuild


@dataclasses.dataclass
class Loaded:
    model: nn.Module
    arch: dict | None
    meta: dict
    path: str
    extra: dict = dataclasses.field(default_factory=dict)
    """Other top-level entries of the checkpoint (e.g. ``init_state_dict``, the weights at initialization)."""


def library_versions() -> dict[str, str]:
    import platform

    from . import __version__

    out = {"edgeprune": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import torchvision

        out["torchvision"] = str(torchvision.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def build_model(arch: dict) -> nn.Module:
    """Build a model from an arch spec, replaying any extension (such as surgery) it records."""
    spec = normalize_arch(arch)
    base = {"name": spec["name"], "kwargs": spec["kwargs"]}
    model = create_model(base)
    for key, value in spec.items():
        if key in ("name", "kwargs"):
            continue
        if key not in _ARCH_EXTENSIONS and key in _ARCH_EXTENSION_MODULES:
            importlib.import_module(_ARCH_EXTENSION_MODULES[key])
        if key not in _ARCH_EXTENSIONS:
            raise CheckpointError(f"architecture spec has an unknown section {key!r}; upgrade edgeprune")
        model = _ARCH_EXTENSIONS[key](model, value)
    model.edgeprune_arch = spec  # type: ignore[assignment]
    return model


def arch_of(model: nn.Module) -> dict | None:
    return getattr(model, "edgeprune_arch", None)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: dict | None = None,
    arch: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a weights-only-loadable checkpoint atomically. ``extra`` adds top-level entries made of tensors and
    plain data (e.g. ``init_state_dict``)."""
    arch = arch or arch_of(model)
    if arch is None:
        raise CheckpointError("the model carries no architecture spec; build it with edgeprune.models.create_model")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "state_dict": state,
        "meta": {"versions": library_versions(), **(meta or {})},
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise CheckpointError(f"extra checkpoint entry {key!r} would overwrite a reserved key")
        payload[key] = value
    buf = io.BytesIO()
    torch.save(payload, buf)
    return _io.write_bytes(path, buf.getvalue())


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "corrupt"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("bytecode.pkl") for n in names):
            return "torchscript"
        return "torch-zip"
    if path.suffix in (".onnx", ".ort"):
        return "onnx"
    if head[:1] == b"\x80":
        return "legacy-pickle"
    return "unknown"


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | dict | None = None,
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> Loaded:
    """Load a model from an edgeprune checkpoint, a plain state_dict (``arch`` required) or, only when
    ``trust_pickle`` is set, a pickled ``nn.Module``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; give the checkpoint file inside it (e.g. {p / 'model.pt'})")
    kind = _sniff(p)
    if kind == "torchscript":
        raise CheckpointError(
            f"{p} is a TorchScript file: it cannot be trained or pruned; give the checkpoint or state_dict it was "
            "scripted from"
        )
    if kind == "onnx":
        raise CheckpointError(f"{p} is an ONNX / ORT file: it cannot be trained or pruned; give the PyTorch checkpoint")
    if kind == "corrupt":
        raise CheckpointError(f"{p} is corrupt or truncated (bad zip archive); re-export or copy it again")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise CheckpointError(f"{p} is corrupt or not a PyTorch checkpoint ({_first_line(exc)})") from None
        if not trust_pickle:
            raise CheckpointError(
                f"{p} contains pickled Python objects (a whole model?) and loading it can run arbitrary code; "
                "re-run with --trust-pickle only if you trust its source, or save model.state_dict() instead"
            ) from None
        return _load_trusted_pickle(p, arch, map_location)
    except Exception as exc:  # the unpickler fails on damaged bytes with many exception types
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{p} is corrupt, truncated or not a PyTorch checkpoint ({_first_line(exc)})") from None
    return _from_object(obj, p, arch)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _from_object(obj: Any, p: Path, arch: str | dict | None) -> Loaded:
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version", 0) > VERSION:
            raise CheckpointError(f"{p} was written by a newer edgeprune (format {obj['version']}); upgrade edgeprune")
        spec = obj["arch"] if arch is None else normalize_arch(arch)
        model = _build(spec, p)
        _load_state(model, obj["state_dict"], p, spec)
        extra = {k: v for k, v in obj.items() if k not in ("format", "version", "arch", "state_dict", "meta")}
        return Loaded(model, spec, dict(obj.get("meta", {})), str(p), extra)
    state = None
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if _is_state_dict(obj.get(key)):
                state = obj[key]
                break
    if state is None:
        raise CheckpointError(
            f"{p} holds no state_dict edgeprune recognizes (top-level keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})"
        )
    if arch is None:
        raise CheckpointError(f"{p} is a plain state_dict without architecture; pass --arch NAME (e.g. --arch lenet5)")
    spec = normalize_arch(arch)
    model = _build(spec, p)
    _load_state(model, state, p, spec)
    return Loaded(model, spec, {}, str(p))


def _build(spec: dict, p: Path) -> nn.Module:
    try:
        return build_model(spec)
    except ModelError as exc:
        raise CheckpointError(f"{p}: {exc}") from None


def _state_mismatch(own: dict, state: dict, ignore_shapes: set[str] = frozenset()) -> str:
    """How ``state`` differs from a model's own state_dict (missing keys, unexpected keys, other shapes; the first
    few of each), or "" when it fits; keys in ``ignore_shapes`` may differ in shape."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and k not in ignore_shapes and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected[:3])}{'…' if len(unexpected) > 3 else ''}")
    if shapes:
        parts.append(f"shape {', '.join(shapes[:2])}{'…' if len(shapes) > 2 else ''}")
    return "; ".join(parts)


def _load_state(model: nn.Module, state: dict, p: Path, spec: dict) -> None:
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{p} does not match architecture {spec['name']} {spec.get('kwargs') or ''} ({mismatch}); "
            "check --arch and its options (e.g. num_classes)"
        )
    model.load_state_dict(state)


def _load_trusted_pickle(p: Path, arch: str | dict | None, map_location) -> Loaded:
    try:
        obj = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # arbitrary code ran; anything can fail
        raise CheckpointError(f"{p} could not be unpickled ({_first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        spec = arch_of(obj) or (normalize_arch(arch) if arch else None)
        return Loaded(obj, spec, {"trusted_pickle": True}, str(p))
    return _from_object(obj, p, arch)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from a local file: ``.safetensors``, or anything ``torch.load(weights_only=True)`` reads that
    holds one (a plain state_dict, an edgeprune checkpoint, ``{"state_dict": ...}``, ``{"model": ...}``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"--weights {p}: no such file")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError("reading .safetensors needs the safetensors package: pip install "
                                  "'edgeprune[timm]'") from None
        try:
            return load_file(str(p))
        except Exception as exc:  # damaged headers raise several types
            raise CheckpointError(f"{p} is not a readable safetensors file ({_first_line(exc)})") from None
    kind = _sniff(p)
    if kind in ("torchscript", "onnx", "corrupt"):
        raise CheckpointError(f"--weights {p} is a {kind} file; give a state_dict (.pt/.pth) or .safetensors file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled modules are refused here: weights only
        raise CheckpointError(f"--weights {p} cannot be read as weights: it is not {_described(p)}; "
                              "--weights reads .safetensors files and state_dicts saved with "
                              "torch.save(model.state_dict(), PATH) (loaded weights-only, no pickled code)") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"]
    if _is_state_dict(obj):
        return obj
    for key in ("state_dict", "model_state_dict", "model", "net", "state_dict_ema"):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return obj[key]
    raise CheckpointError(f"--weights {p} holds no state_dict edgeprune recognizes "
                          f"({_top_level(obj)}); save it with torch.save(model.state_dict(), PATH), or a dict "
                          "with the weights under 'state_dict', or use .safetensors")


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load a local weights file into ``model`` (``module.`` prefixes of data-parallel saves are dropped).

    Every tensor must match by name and shape, except the output layer's, which stays at initialization when its
    shape differs (weights trained for another class count: fine-tuning). Anything else that does not match is one
    CheckpointError naming the first mismatches."""
    state = read_weights(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    head = _output_layer_keys(model)
    skipped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape) and k in head]
    mismatch = _state_mismatch(own, state, ignore_shapes=set(skipped))
    if mismatch:
        name = (arch_of(model) or {}).get("name", type(model).__name__)
        first = next((k for k, v in own.items() if v.dim() == 4), None)
        if first is not None and first in state and state[first].dim() == 4 \
                and state[first].shape[1] != own[first].shape[1] and state[first].shape[0] == own[first].shape[0]:
            want = int(state[first].shape[1])
            raise CheckpointError(f"--weights {path} expects {want} input channel{'s' if want != 1 else ''} but "
                                  f"{name} was built with {int(own[first].shape[1])}; pass --channels {want}")
        raise CheckpointError(f"--weights {path} does not fit {name} ({mismatch}); check --arch and --arch-kwargs")
    model.load_state_dict({k: (own[k] if k in skipped else v) for k, v in state.items()})
    return {"loaded": len(state) - len(skipped), "skipped": skipped}


def _output_layer_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (timm's ``get_classifier()``, else the last conv / linear)."""
    head = None
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # a model's own helper may fail on odd configs; fall back to the last layer
            head = None
    if not isinstance(head, nn.Module) or not list(head.parameters()):
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
        head = layers[-1] if layers else None
    if head is None:
        return set()
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    return {names[id(t)] for t in head.state_dict(keep_vars=True).values() if id(t) in names}


def _top_level(obj) -> str:
    if isinstance(obj, dict):
        return f"top-level keys: {', '.join(map(str, list(obj)[:8])) or 'none'}"
    return f"it holds a {type(obj).__name__}"


def _described(path: Path) -> str:
    """What a file that torch.load cannot read seems to be (from its first bytes), for the error line."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return "readable"
    if not head:
        return "a torch file (it is empty)"
    if head.startswith(b"PK"):
        return "a weights-only torch file (a zip archive, perhaps a pickled model: save model.state_dict() instead)"
    if head[:1] == b"\x80":
        return "a weights-only torch file (a pickle in the legacy format, perhaps holding code)"
    try:
        head.decode("utf-8")
        return "a torch file (it looks like text)"
    except UnicodeDecodeError:
        return "a torch file (unknown binary data)"

