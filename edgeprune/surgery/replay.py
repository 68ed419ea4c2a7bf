"""The slim architecture as data: the ordered pruning steps that turn a freshly built model into the slim one.

Spec (JSON, stored as ``arch["surgery"]``)::

    {"version": 1, "input_shape": [3, 32, 32], "bias_added": ["fc"],
     "steps": [["layers.0.conv1", "prune_conv_out_channels", [3, 7]], ...,
               ["layer1.0.conv2", "cut_conv_groups", [0, 5]]]}

Each ``prune_*`` step is a torch-pruning group rooted at a layer's output channels. torch-pruning cannot cut a
grouped conv (1 < groups < channels), so its members in such a group are skipped and a ``cut_conv_groups`` step
(version 2) removes whole groups of that conv (original group indices), after the groups around it. Replaying the
steps on the un-trained base model with a fresh DependencyGraph reproduces every shape, then the slim state_dict
loads into it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CheckpointError, SurgeryError
from .fold import add_zero_biases
from .parts import TraceError

SPEC_VERSION = 3
"""1: torch-pruning steps only; 2: adds ``cut_conv_groups`` steps; 3: adds ``parts`` (surgery inside the traceable
sub-modules of a model torch-pruning cannot trace whole). Specs without them are still written as 1 or 2."""
CUT_GROUPS = "cut_conv_groups"


def build_graph(model: nn.Module, input_shape: tuple[int, ...]):
    """torch-pruning's DependencyGraph of ``model``; tracing needs autograd, so it is switched on here."""
    import torch_pruning as tp

    param = next(model.parameters())
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    model.eval()
    seen = []

    def keep_outputs(out):
        seen.append(out)
        return out

    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False,
                                                       output_transform=keep_outputs)
    except Exception as exc:  # tracing runs arbitrary model code; any failure means "cannot group this model"
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TraceError(f"torch-pruning could not trace the model on input {tuple(input_shape)} ({first}); "
                           "check the input shape, or keep this model dense") from None
    out_fns = {t.grad_fn for t in _tensor_leaves(seen[0] if seen else None) if t.grad_fn is not None}
    dg.edgeprune_outputs = {node for node in dg.module2node.values() if node.grad_fn in out_fns}
    return dg


def _tensor_leaves(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensor_leaves(o)]
    return []


def output_nodes(dg) -> set:
    """Graph nodes (layers) whose output is one of the model's outputs, as traced by :func:`build_graph`."""
    return getattr(dg, "edgeprune_outputs", set())


def step_name(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return "prune_linear_out_channels"
    if getattr(layer, "groups", 1) > 1 and layer.groups == layer.out_channels:
        return "prune_depthwise_conv_out_channels"
    return "prune_conv_out_channels"


def pruning_group(dg, layer: nn.Module, idxs: list[int]):
    pruner = dg.get_pruner_of_module(layer)
    if pruner is None:
        raise SurgeryError(f"torch-pruning has no pruner for {type(layer).__name__}; this layer cannot be cut")
    return dg.get_pruning_group(layer, pruner.prune_out_channels, idxs)


def prune_group(group) -> None:
    """``group.prune()`` without its grouped-conv members: torch-pruning's conv pruner would cut a grouped conv's
    weight inconsistently; :func:`cut_conv_groups` cuts it instead."""
    from .plan import is_grouped_conv

    if not any(is_grouped_conv(it.dep.target.module) for it in group.items):
        group.prune(record_history=False)
        return
    for dep, idxs in group.items:
        if not is_grouped_conv(dep.target.module):
            dep(idxs)


def cut_conv_groups(layer: nn.Module, groups: list[int]) -> None:
    """Remove whole groups of a grouped conv in place: their output channels, their input channels, their weights
    and biases. The other groups compute exactly what they did."""
    g = layer.groups
    drop = set(int(j) for j in groups)
    if not drop or any(not 0 <= j < g for j in drop) or len(drop) >= g or layer.transposed:
        raise SurgeryError(f"cannot cut groups {sorted(drop)} of {type(layer).__name__} with groups={g}")
    keep = [j for j in range(g) if j not in drop]
    per_in, per_out = layer.in_channels // g, layer.out_channels // g
    rows = torch.tensor([j * per_out + k for j in keep for k in range(per_out)], dtype=torch.long,
                        device=layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.detach().index_select(0, rows).clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach().index_select(0, rows).clone())
    layer.in_channels, layer.out_channels, layer.groups = len(keep) * per_in, len(keep) * per_out, len(keep)


def apply_step(dg, model: nn.Module, name: str, fn: str, idxs: list[int]) -> None:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"surgery step names layer {name!r}, which the architecture lacks") from None
    if fn == CUT_GROUPS:
        cut_conv_groups(layer, idxs)
    else:
        prune_group(pruning_group(dg, layer, [int(i) for i in idxs]))


def replay(model: nn.Module, spec: dict) -> nn.Module:
    """Rebuild hook for ``arch["surgery"]`` (registered with edgeprune.checkpoint.register_arch_extension)."""
    if not isinstance(spec, dict) or spec.get("version", 0) > SPEC_VERSION or "steps" not in spec:
        raise CheckpointError("the checkpoint's surgery section is unreadable or from a newer edgeprune; upgrade")
    add_zero_biases(model, list(spec.get("bias_added", [])))
    if spec["steps"]:
        dg = build_graph(model, tuple(spec["input_shape"]))
        for name, fn, idxs in spec["steps"]:
            apply_step(dg, model, name, fn, idxs)
    for part in spec.get("parts", []):
        try:
            sub = model.get_submodule(part["scope"])
        except AttributeError:
            raise CheckpointError(f"surgery part names module {part['scope']!r}, which the architecture "
                                  "lacks") from None
        replay(sub, part)
    return model.eval()


def merge_specs(old: dict | None, new: dict) -> dict:
    """Surgery on an already slim model appends its steps to the earlier ones (replayed in order)."""
    if not old:
        return new
    return {
        "version": max(int(old.get("version", 1)), int(new["version"])),
        "input_shape": new["input_shape"],
        "bias_added": list(dict.fromkeys(list(old.get("bias_added", [])) + list(new["bias_added"]))),
        "steps": list(old["steps"]) + list(new["steps"]),
        **({"parts": list(old.get("parts", [])) + list(new["parts"])} if old.get("parts") or new.get("parts") else {}),
    }
