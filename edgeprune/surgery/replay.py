"""The slim architecture as data: the ordered pruning steps that turn a freshly built model into the slim one.

Spec (JSON, stored as ``arch["surgery"]``)::

    {"version": 1, "input_shape": [3, 32, 32], "bias_added": ["fc"],
     "steps": [["layers.0.conv1", "prune_conv_out_channels", [3, 7]], ...]}

Each step is a torch-pruning group rooted at a layer's output channels; replaying the steps on the un-trained base
model with a fresh DependencyGraph reproduces every shape, then the slim state_dict loads into it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CheckpointError, SurgeryError
from .fold import add_zero_biases

SPEC_VERSION = 1


def build_graph(model: nn.Module, input_shape: tuple[int, ...]):
    """torch-pruning's DependencyGraph of ``model``; tracing needs autograd, so it is switched on here."""
    import torch_pruning as tp

    param = next(model.parameters())
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    except Exception as exc:  # tracing runs arbitrary model code; any failure means "cannot group this model"
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SurgeryError(f"torch-pruning could not trace the model on input {tuple(input_shape)} ({first}); "
                           "check the input shape, or keep this model dense") from None


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


def replay(model: nn.Module, spec: dict) -> nn.Module:
    """Rebuild hook for ``arch["surgery"]`` (registered with edgeprune.checkpoint.register_arch_extension)."""
    if not isinstance(spec, dict) or spec.get("version", 0) > SPEC_VERSION or "steps" not in spec:
        raise CheckpointError("the checkpoint's surgery section is unreadable or from a newer edgeprune; upgrade")
    add_zero_biases(model, list(spec.get("bias_added", [])))
    if not spec["steps"]:
        return model.eval()
    dg = build_graph(model, tuple(spec["input_shape"]))
    for name, _fn, idxs in spec["steps"]:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"surgery step names layer {name!r}, which the architecture lacks") from None
        pruning_group(dg, layer, [int(i) for i in idxs]).prune(record_history=False)
    return model.eval()


def merge_specs(old: dict | None, new: dict) -> dict:
    """Surgery on an already slim model appends its steps to the earlier ones (replayed in order)."""
    if not old:
        return new
    return {
        "version": SPEC_VERSION,
        "input_shape": new["input_shape"],
        "bias_added": list(dict.fromkeys(list(old.get("bias_added", [])) + list(new["bias_added"]))),
        "steps": list(old["steps"]) + list(new["steps"]),
    }
