"""Verification: the slim model must compute what the masked model computes, or surgery fails loudly."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import SurgeryError
from .detect import CONSUMERS

_CHANNEL_LAYERS = CONSUMERS + (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.PReLU)


def _outputs(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [_first_tensor(model(x)) for x in batches]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    return _first_tensor(out[0])


def output_difference(masked: nn.Module, slim: nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(max |slim - masked|, max |masked|) over all batches."""
    diff, scale = 0.0, 0.0
    for a, b in zip(_outputs(masked, batches), _outputs(slim, batches)):
        diff = max(diff, float((a.double() - b.double()).abs().max()))
        scale = max(scale, float(a.double().abs().max()))
    return diff, scale


def diverging_layers(masked: nn.Module, slim: nn.Module, x: torch.Tensor, kept: dict[str, list[int]],
                     tolerance: float) -> list[str]:
    """Layers (in execution order) whose kept output channels differ between the two models beyond tolerance."""
    rec: dict[str, list] = {"masked": [], "slim": []}

    def hooks(model, key):
        out = []
        for name, m in model.named_modules():
            if isinstance(m, _CHANNEL_LAYERS):
                out.append(m.register_forward_hook(lambda mod, a, o, n=name: rec[key].append((n, mod, o.detach()))))
        return out

    handles = hooks(masked, "masked") + hooks(slim, "slim")
    try:
        with torch.no_grad():
            masked(x)
            slim(x)
    finally:
        for h in handles:
            h.remove()
    slim_out = {n: o for n, _, o in rec["slim"]}
    bad = []
    for name, mod, a in rec["masked"]:
        b = slim_out.get(name)
        if b is None or name in bad:
            continue
        d = a.dim() - 1 if isinstance(mod, nn.Linear) else 1
        if name in kept:
            a = a.index_select(d, torch.tensor(kept[name], device=a.device))
        if a.shape != b.shape:
            bad.append(name)
            continue
        scale = float(a.abs().max()) if a.numel() else 0.0
        if float((a - b).abs().max()) > tolerance * max(scale, 1e-30):
            bad.append(name)
    return bad


def verify(masked: nn.Module, slim: nn.Module, batches: list[torch.Tensor], kept: dict[str, list[int]],
           tolerance: float) -> dict:
    """Raise SurgeryError when max |Δ| > tolerance · max |masked output| on any batch; return the figures."""
    diff, scale = output_difference(masked, slim, batches)
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    if rel > tolerance:
        bad = diverging_layers(masked, slim, batches[0], kept, tolerance)
        where = ", ".join(bad[:4]) if bad else "no single layer (accumulated error)"
        raise SurgeryError(
            f"the slim model's output differs from the masked model's by {diff:.3g} ({rel:.2g} of the output scale, "
            f"tolerance {tolerance:g}); first diverging layers: {where}. A channel was removed that is not dead — "
            "report this with the model"
        )
    return {"max_abs_diff": diff, "output_scale": scale, "relative_diff": rel, "tolerance": tolerance}
