"""Surgery by parts: when torch-pruning cannot trace the whole model (ShuffleNetV2's channel shuffle), cut inside
the sub-modules it can trace and keep the rest dense.

The same happens when a whole-model cut does not verify (torch-pruning misread a structure, e.g. GhostNet's slice
of a concatenation): nothing of that cut is kept, and the parts are tried one by one.

A part is a sub-module called once per forward with one tensor: it is cut as a model of its own, on the inputs it
receives inside the whole model (random probes and the real batch, recorded with hooks), so its output width — its
interface to the rest of the model — never changes. A part that cannot be traced is split into its children, down
to single layers; whatever stays untraced stays dense, with the reason in the report. The whole model is verified
at the end, exactly as a traced surgery is.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from ..errors import SurgeryError
from .detect import CONSUMERS

log = logging.getLogger(__name__)


class TraceError(SurgeryError):
    """torch-pruning could not trace a model (or part) into a dependency graph."""


def _short(reason: str) -> str:
    return reason.replace("; check the input shape, or keep this model dense", "")


def _has_layers(module: nn.Module) -> bool:
    return any(isinstance(m, CONSUMERS) for m in module.modules())


def input_fed_depthwise(module: nn.Module, x: torch.Tensor) -> set[str]:
    """Depthwise convs that read ``module``'s own input: their channels are the input's, which a part cannot
    change (it is fed by the rest of the model), so no group may be rooted there."""
    found: set[str] = set()

    def hook(name):
        def pre(m, args):
            if args and args[0] is x:
                found.add(name)
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in module.named_modules()
               if isinstance(m, CONSUMERS) and not isinstance(m, nn.Linear) and m.groups > 1
               and m.groups == m.in_channels]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return found


def record_part_inputs(model: nn.Module, batches: list[torch.Tensor]) -> tuple[dict[str, list], dict[str, int]]:
    """Per sub-module: its input tensor for each batch (None when it took anything but one tensor) and how many
    times it ran per forward (the most over the batches)."""
    inputs: dict[str, list] = {}
    calls: dict[str, int] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def pre(module, args, kwargs):
            counts[name] = counts.get(name, 0) + 1
            single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            inputs.setdefault(name, []).append(args[0].detach() if single else None)
        return pre

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            for x in batches:
                counts.clear()
                model(x)
                for n, c in counts.items():
                    calls[n] = max(calls.get(n, 0), c)
    finally:
        for h in handles:
            h.remove()
    return inputs, calls


def surgery_by_parts(masked: nn.Module, shape: tuple[int, ...], probe: list[torch.Tensor], check: list[torch.Tensor],
                     real: torch.Tensor | None, round_channels, tolerance: float, reason: str, cut_part) -> tuple:
    """Cut every traceable part of ``masked`` (see module docstring). ``cut_part(module, shape, real, round,
    tolerance)`` is the traced surgery of one part returning a SurgeryResult. Returns (slim model, parts specs,
    report additions, kept indices by full layer name)."""
    from .core import _out_size
    from .verify import VerificationError, verify

    work = copy.deepcopy(masked).eval()
    batches = probe + ([real] if real is not None else [])
    inputs, calls = record_part_inputs(masked, batches)
    parts, dense, untraced, kept_all, sub_reports = [], [], [], {}, []

    def visit(name: str, module: nn.Module, why_parent: str) -> None:
        if not _has_layers(module):
            return
        recorded = inputs.get(name)
        if not recorded or calls.get(name, 0) != 1 or any(t is None for t in recorded):
            why = ("it runs more than once per forward" if calls.get(name, 0) > 1 else
                   "it does not take exactly one tensor" if recorded else "it does not run in the forward")
            return descend(name, module, why)
        sub_shape = tuple(recorded[0].shape[1:])
        sub_real = recorded[-1] if real is not None else None
        try:
            res = cut_part(masked.get_submodule(name), sub_shape, sub_real, round_channels, tolerance)
        except (TraceError, VerificationError) as exc:
            untraced.append({"module": name, "reason": _short(str(exc))})
            return descend(name, module, str(exc))
        except (SurgeryError, RuntimeError) as exc:
            dense.append({"module": name, "reason": _short(str(exc).splitlines()[0][:200] if str(exc) else
                                                          type(exc).__name__)})
            return
        if not res.removed and not res.report["steps"]:
            return
        parent, _, child = name.rpartition(".")
        setattr(work.get_submodule(parent) if parent else work, child, res.model)
        spec = res.model.__dict__.pop("edgeprune_arch")["surgery"]
        parts.append({"scope": name, **spec})
        sub_reports.append((name, res.report))
        for layer, removed in res.removed.items():
            full = f"{name}.{layer}"
            size = _out_size(masked.get_submodule(full))
            kept_all[full] = [i for i in range(size) if i not in set(removed)]

    def descend(name: str, module: nn.Module, why: str) -> None:
        children = [(f"{name}.{c}" if name else c, m) for c, m in module.named_children() if _has_layers(m)]
        if not children or isinstance(module, CONSUMERS):
            dense.append({"module": name or "(model)", "reason": _short(why)})
            return
        for child_name, child in children:
            visit(child_name, child, why)

    descend("", masked, reason)
    work.eval()
    verification = verify(masked, work, check + ([real] if real is not None else []), kept_all, tolerance)
    extra = {
        "partial": {"reason": _short(reason), "parts_cut": [p["scope"] for p in parts],
                    "split": untraced, "kept_dense": dense},
        "kept": [{**k, "layer": f"{n}.{k['layer']}"} for n, r in sub_reports for k in r["kept"]],
        "skipped_groups": [{**k, "layer": f"{n}.{k['layer']}"} for n, r in sub_reports for k in r["skipped_groups"]],
        "channels_removed": sum(r["channels_removed"] for _, r in sub_reports),
        "constant_channels_folded": sum(r["constant_channels_folded"] for _, r in sub_reports),
        "bias_added": [f"{n}.{b}" for n, r in sub_reports for b in r["bias_added"]],
        "grouped_convs": [{**g, "layer": f"{n}.{g['layer']}"} for n, r in sub_reports for g in r["grouped_convs"]],
        "steps": sum(r["steps"] for _, r in sub_reports),
        "verification": verification,
    }
    log.warning("surgery: torch-pruning cannot trace the whole model (%s); cut inside %d traceable parts; "
                "%d containers split into their children, %d parts kept dense", _short(reason), len(parts),
                len(untraced), len(dense))
    return work, parts, extra, kept_all
