"""Neurons of a network as SeReNe sees them (SeReNe Sec. III-A).

A *neuron* is one output channel of a Conv or Linear layer together with its bias and, when a BatchNorm directly
follows, that BatchNorm channel (γ, β). Its post-synaptic potential (PSP) ``p`` is the input of its activation
function: the BatchNorm output when there is one, else the layer output. The discovery runs ``torch.fx`` on the
model and keeps the graph: the upper bound (SeReNe eq. 13) walks it with absolute Jacobians.
"""

from __future__ import annotations

import dataclasses
import logging
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError

log = logging.getLogger(__name__)

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.ELU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                      nn.Softplus, nn.Hardswish, nn.Mish)
ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, torch.sigmoid, torch.tanh,
                        F.hardtanh, F.softplus, F.hardswish, F.mish)
ADDS = (operator.add, operator.iadd, torch.add)


@dataclasses.dataclass
class NeuronLayer:
    """The neurons of one Conv/Linear layer: ``layer`` (+ ``bn``), the PSP module whose output is ``p``, and the
    activation ``p`` feeds (``None`` for the identity), possibly after a residual addition."""

    name: str
    layer: nn.Module
    bn: nn.Module | None
    bn_name: str | None
    activation: object | None
    """An activation module or function, or None (identity)."""
    activation_name: str | None
    activation_after_add: bool
    """True when ``p`` is added to a residual branch before the activation (ResNet blocks)."""
    is_output: bool
    """An output layer: its neurons are the logits and are never removed."""

    @property
    def psp_module(self) -> nn.Module:
        return self.bn if self.bn is not None else self.layer

    @property
    def num_neurons(self) -> int:
        return self.layer.out_features if isinstance(self.layer, nn.Linear) else self.layer.out_channels

    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(qualified name, parameter) of everything that belongs to these neurons; dim 0 indexes the neuron."""
        out = [(f"{self.name}.{n}", p) for n, p in self.layer.named_parameters(recurse=False)]
        if self.bn is not None:
            out += [(f"{self.bn_name}.{n}", p) for n, p in self.bn.named_parameters(recurse=False)]
        return out


@dataclasses.dataclass
class NeuronGraph:
    """The traced graph and the neuron layers in execution order."""

    graph_module: torch.fx.GraphModule
    layers: list[NeuronLayer]
    psp_nodes: dict[str, str]
    """fx node name of each layer's PSP → layer name."""

    def hidden(self) -> list[NeuronLayer]:
        return [nl for nl in self.layers if not nl.is_output]


def _is_activation(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_", "sigmoid", "tanh")
    return False


def _activation_of(gm: torch.fx.GraphModule, node: torch.fx.Node):
    if node.op == "call_module":
        return gm.get_submodule(node.target), node.target
    if node.op == "call_function":
        return node.target, getattr(node.target, "__name__", str(node.target))
    return {"relu": torch.relu, "relu_": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[node.target], node.target


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADDS) or (node.op == "call_method" and node.target in ("add", "add_"))


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({first}); SeReNe needs a model without "
            "data-dependent control flow"
        ) from None


def find_neurons(model: nn.Module) -> NeuronGraph:
    """Discover (layer, BatchNorm, activation) triples in execution order (SeReNe's neurons).

    The output layers are the producers whose output reaches the model output without passing another producer.
    """
    gm = trace(model)
    modules = dict(model.named_modules())
    layers: list[NeuronLayer] = []
    psp_nodes: dict[str, str] = {}
    producer_nodes = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), PRODUCERS)]
    if not producer_nodes:
        raise ModelError(f"{type(model).__name__} has no Conv or Linear layer: nothing for SeReNe to regularize")
    seen = set()
    for node in producer_nodes:
        if node.target in seen:
            raise ModelError(f"layer {node.target} is called more than once (shared weights); SeReNe needs one call per layer")
        seen.add(node.target)
        layer = modules[node.target]
        psp, bn, bn_name = node, None, None
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules.get(users[0].target), BATCHNORMS):
            psp = users[0]
            bn_name = psp.target
            bn = modules[bn_name]
        act, act_name, after_add = None, None, False
        users = list(psp.users)
        if len(users) == 1 and _is_activation(gm, users[0]):
            act, act_name = _activation_of(gm, users[0])
        elif len(users) == 1 and _is_add(users[0]):
            add_users = list(users[0].users)
            if len(add_users) == 1 and _is_activation(gm, add_users[0]):
                act, act_name = _activation_of(gm, add_users[0])
                after_add = True
        layers.append(NeuronLayer(node.target, layer, bn, bn_name, act, act_name, after_add, False))
        psp_nodes[psp.name] = node.target
    outputs = _output_producers(gm, {n.name for n in producer_nodes})
    for nl in layers:
        nl.is_output = nl.name in outputs
    return NeuronGraph(gm, layers, psp_nodes)


def _output_producers(gm: torch.fx.GraphModule, producer_names: set[str]) -> set[str]:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    found: set[str] = set()
    stack = list(out_node.all_input_nodes)
    visited = set()
    while stack:
        n = stack.pop()
        if n.name in visited:
            continue
        visited.add(n.name)
        if n.name in producer_names:
            found.add(n.target)
            continue
        stack.extend(n.all_input_nodes)
    return found


def neuron_alive(nl: NeuronLayer) -> torch.Tensor:
    """Per-neuron bool: True while any parameter of the neuron is nonzero (a neuron whose parameters are all zero
    is dead)."""
    alive = torch.zeros(nl.num_neurons, dtype=torch.bool, device=nl.layer.weight.device)
    for _, p in nl.parameters():
        alive |= p.detach().reshape(p.shape[0], -1).ne(0).any(1)
    return alive
