"""Model and data must agree before any training starts: one forward of one real batch, and one line when they don't.

The line names what the model expects, what the data gives and the option that fixes it, instead of the
``mat1 and mat2 shapes cannot be multiplied`` a user would otherwise meet minutes into a run.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import DatasetError

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _fmt(shape) -> str:
    return "×".join(str(s) for s in shape)


def expected_input(model: nn.Module, arch: dict | None) -> tuple[int, ...] | None:
    """The single-sample input the model was built for: its registry entry's (zoo, torchvision, timm) adjusted
    for channel kwargs, or None when edgeprune cannot know (user code)."""
    if not arch:
        return None
    from .errors import ModelError
    from .models import input_shape_of

    try:
        return tuple(input_shape_of({"name": arch["name"], "kwargs": arch.get("kwargs", {})}))
    except ModelError:
        return None


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)), None)


def _described(model: nn.Module, arch: dict | None) -> tuple[str, tuple[int, ...] | None]:
    shape = expected_input(model, arch)
    first = _first_layer(model)
    if shape:
        return f"input {_fmt(shape)}", shape
    if first is None:
        return "an input edgeprune cannot infer", None
    name, layer = first
    if isinstance(layer, nn.Linear):
        return f"{layer.in_features} input features (first layer {name})", None
    return f"{layer.in_channels} input channels (first layer {name})", None


def _size(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


def _fix(model: nn.Module, expected: tuple[int, ...] | None, given: tuple[int, ...]) -> str:
    first = _first_layer(model)
    want_c = None
    if first is not None and not isinstance(first[1], nn.Linear):
        want_c = first[1].in_channels
    elif expected and len(expected) == 3:
        want_c = expected[0]
    if want_c is not None and len(given) == 3 and want_c != given[0]:
        return f"pass --channels {want_c} (the data has {given[0]})"
    if first is not None and isinstance(first[1], nn.Linear) and len(given) == 3:
        feats = first[1].in_features
        if expected and len(expected) == 3 and tuple(expected[1:]) != tuple(given[1:]):
            return f"pass --image-size {_size(expected[1], expected[2])}"
        side = int(round((feats / given[0]) ** 0.5))
        if side * side * given[0] == feats:
            return f"pass --image-size {side}"
    if expected and len(expected) == 3 and tuple(expected[1:]) != tuple(given[1:]):
        return f"pass --image-size {_size(expected[1], expected[2])}"
    return ("pass --image-size / --channels to match what the model was built for, or --arch-kwargs that fit the "
            "data")


def check_model_data(model: nn.Module, data, arch: dict | None = None, batch: int = 8,
                     classes_fix: str | None = None, input_fix=None) -> None:
    """Run ``model`` once on up to ``batch`` training samples of ``data`` (a DataBundle); raise one DatasetError line
    when it fails or its output does not have one score per class. The model's mode and gradients are untouched.
    ``classes_fix`` / ``input_fix(option_hint)`` word the fix for commands without the data options (compress)."""
    x = data.train.x[:batch] if hasattr(data.train, "x") else torch.stack([data.train[i][0] for i in range(
        min(batch, len(data.train)))])
    given = tuple(x.shape[1:])
    name = (arch or {}).get("name") or type(model).__name__
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device, param.dtype)
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # any failure of the forward is a mismatch the user must see explained
        what, expected = _described(model, arch)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        fix = _fix(model, expected, given)
        raise DatasetError(f"model {name} does not fit {data.name}: it expects {what}, the data gives "
                           f"{_fmt(given)} per sample ({first}); {input_fix(fix) if input_fix else fix}") from None
    finally:
        for m, was in training:
            m.training = was
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        raise DatasetError(f"model {name} returns {type(out).__name__} of shape "
                           f"{tuple(getattr(out, 'shape', ()))}, not a batch of class scores; "
                           "return logits (N, classes)")
    if out.shape[1] != data.num_classes:
        fix = classes_fix or f"pass --arch-kwargs '{{\"num_classes\": {data.num_classes}}}'"
        raise DatasetError(f"model {name} has {out.shape[1]} outputs but {data.name} has {data.num_classes} classes; "
                           f"{fix}")
