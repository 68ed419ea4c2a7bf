"""Verification: the slim model must compute what the masked model computes, on every output, or surgery fails
loudly."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import SurgeryError
from .detect import CONSUMERS



class VerificationError(SurgeryError):
    """The slim model does not compute what the masked one does: the cut was wrong, and it is not kept."""


_CHANNEL_LAYERS = CONSUMERS + (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.PReLU)


def output_leaves(out, path: str = "output") -> list[tuple[str, object]]:
    """Every leaf of a model's output (tensors, and anything else as-is) with its path, e.g. ``output[1]``,
    ``output['embedding']``: tuples, lists and dicts are walked in order."""
    if isinstance(out, dict):
        return [leaf for k, v in out.items() for leaf in output_leaves(v, f"{path}[{k!r}]")]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in output_leaves(v, f"{path}[{i}]")]
    return [(path, out)]


def _describe(leaves) -> str:
    return ", ".join(f"{p} {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}" for p, v in leaves)


def output_difference(masked: nn.Module, slim: nn.Module, batches: list[torch.Tensor]) -> list[dict]:
    """Per output leaf: max |slim - masked| and max |masked| over all batches. Raises SurgeryError when the two
    models return different structures or shapes (a narrowed embedding is a different model, not a small error)."""
    per: dict[str, dict] = {}
    with torch.no_grad():
        for x in batches:
            a, b = output_leaves(masked(x)), output_leaves(slim(x))
            same = [p for p, _ in a] == [p for p, _ in b] and all(
                isinstance(u, torch.Tensor) == isinstance(v, torch.Tensor)
                and (not isinstance(u, torch.Tensor) or u.shape == v.shape) for (_, u), (_, v) in zip(a, b))
            if not same:
                raise VerificationError(
                    f"the slim model's outputs ({_describe(b)}) do not have the masked model's shapes "
                    f"({_describe(a)}); a channel that reaches a model output was removed — report this with the "
                    "model")
            for (path, u), (_, v) in zip(a, b):
                rec = per.setdefault(path, {"output": path, "shape": list(u.shape) if isinstance(u, torch.Tensor)
                                            else None, "max_abs_diff": 0.0, "output_scale": 0.0})
                if not isinstance(u, torch.Tensor):
                    if u != v:
                        rec["max_abs_diff"] = float("inf")
                    continue
                if u.numel():
                    rec["max_abs_diff"] = max(rec["max_abs_diff"], float((u.double() - v.double()).abs().max()))
                    rec["output_scale"] = max(rec["output_scale"], float(u.double().abs().max()))
    for rec in per.values():
        diff, scale = rec["max_abs_diff"], rec["output_scale"]
        rec["relative_diff"] = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return list(per.values())


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
    """Compare every output of the two models (shapes, then values): raise SurgeryError when any output's
    max |Δ| > tolerance · max |that output of the masked model| on any batch; return the figures."""
    outputs = output_difference(masked, slim, batches)
    worst = max(outputs, key=lambda r: r["relative_diff"]) if outputs else {
        "output": "output", "max_abs_diff": 0.0, "output_scale": 0.0, "relative_diff": 0.0}
    rel = worst["relative_diff"]
    if rel > tolerance:
        bad = diverging_layers(masked, slim, batches[0], kept, tolerance)
        where = ", ".join(bad[:4]) if bad else "no single layer (accumulated error)"
        name = f" {worst['output']}" if len(outputs) > 1 else ""
        raise VerificationError(
            f"the slim model's output{name} differs from the masked model's by {worst['max_abs_diff']:.3g} "
            f"({rel:.2g} of the output scale, tolerance {tolerance:g}); first diverging layers: {where}. A channel "
            "was removed that is not dead — report this with the model"
        )
    return {"max_abs_diff": max((r["max_abs_diff"] for r in outputs), default=0.0),
            "output_scale": max((r["output_scale"] for r in outputs), default=0.0),
            "relative_diff": rel, "tolerance": tolerance, "outputs": outputs}
