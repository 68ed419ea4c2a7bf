"""Neuron-level thresholding: the bisection of SeReNe Sec. IV-B run over whole neurons instead of single parameters.

A *neuron* here is one channel together with everything coupled to it, as torch-pruning's DependencyGraph groups it:
the weight row and bias of every Conv / Linear that writes the channel, the BatchNorm γ and β of that channel, the
depthwise convs on it, and the channels tied to it by residual additions and concatenations (one group spans them
all). Pruning a neuron zeroes *all* of those parameters, BN γ and β included, so the channel outputs exactly 0
everywhere it goes (a zero BN channel emits β = 0; a zero residual channel stays 0 through every add) and surgery
removes it without folding any constant.

Neurons are ranked by a scale-free score (:data:`SCORES`), lowest first, and the bisection finds the largest number
of lowest-ranked neurons whose removal keeps the validation criterion admissible (SeReNe: loss ≤ (1 + TWT)·L̂).
The output layer is never touched and every group keeps at least one neuron.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch
import torch.nn as nn

from ..masks import Masks
from .bisection import search_masks

log = logging.getLogger(__name__)

SCORES = ("taylor", "norm", "gamma")
"""``taylor``: the loss-based score (LOBSTER's view of a parameter's importance, taken to whole neurons): the squared
first-order change of the validation loss when every parameter of the neuron goes to zero, (Σ θ·∂L/∂θ)², summed
over the neuron's parameters in all its coupled layers and averaged over validation mini-batches. Comparable across
layers and groups, and it sees that a residual-stream channel, which feeds a whole stage, matters more than a
channel inside one block. ``norm``: the neuron's parameter norm in each member layer divided by that layer's mean
over alive neurons, averaged over the members (conv/linear rows with their bias; BN's (γ, β)). ``gamma``: |γ| over
the layer's mean |γ| where the neuron has BatchNorm channels (the network-slimming criterion), else ``norm``."""


@dataclasses.dataclass
class NeuronGroup:
    """Coupled channels that can only leave together: ``size`` neurons, indexed like the root layer's outputs."""

    root: str
    size: int
    members: list[tuple[str, str, torch.Tensor, torch.Tensor]]
    """(module name, kind, root indices, indices in that module's output dim): kind is "layer" (conv/linear
    producer), "bn" or "depthwise"."""
    params: list[tuple[str, int, torch.Tensor, torch.Tensor]]
    """(parameter name, dim, root indices, indices along dim): every parameter slice a neuron owns."""
    consumers: list[tuple[str, torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)
    """(conv / linear name, root indices, its input indices): the layers that read the neuron (a conv channel
    read through a flatten is several Linear inputs)."""


def _out_dim(module: nn.Module) -> int:
    return 1 if getattr(module, "transposed", False) else 0


def _indices(item) -> tuple[torch.Tensor, torch.Tensor]:
    """A torch-pruning group item's (root indices, indices in its own layer), aligned."""
    return (torch.as_tensor([int(r) for r in item.root_idxs], dtype=torch.long),
            torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long))


def neuron_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[NeuronGroup]:
    """The prunable neurons of ``model``, grouped as torch-pruning couples them.

    Left out (never pruned here): the output layer's group, groups through layers exact surgery does not support,
    groups with grouped convolutions (1 < groups < channels), and channels no Conv / Linear consumes.
    """
    import torch_pruning as tp

    from ..surgery.detect import producer_order
    from ..surgery.plan import _allowed_types, is_grouped_conv
    from ..surgery.replay import build_graph

    names = {m: n for n, m in model.named_modules()}
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
        output_layer = model.get_submodule(producer_order(model, x)[-1])
        dg = build_graph(model, tuple(input_shape))
    finally:
        model.train(was_training)
    allowed = _allowed_types()
    t = tp.ops.OPTYPE
    groups: list[NeuronGroup] = []
    for group in dg.get_all_groups(ignored_layers=[output_layer],
                                   root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
        items = list(group.items)
        if any(it.dep.target.type not in allowed for it in items):
            continue
        if any(is_grouped_conv(it.dep.target.module) for it in items):
            continue
        root_mod = items[0].dep.target.module
        if root_mod not in names:
            continue
        size = len(items[0].idxs)
        members, params, consumers = [], [], []
        seen: set[tuple[str, str]] = set()
        for it in items:
            node = it.dep.target
            mod = node.module
            if mod not in names:
                continue
            name = names[mod]
            handler = it.dep.handler.__name__
            ridx, midx = _indices(it)
            if node.type in (t.CONV, t.LINEAR) and handler == "prune_in_channels":
                consumers.append((name, ridx, midx))
                continue
            if node.type in (t.CONV, t.LINEAR):
                kind = "layer"
            elif node.type == t.DEPTHWISE_CONV:
                kind = "depthwise"
            elif node.type == t.BN:
                kind = "bn"
            else:
                continue  # concat / split / elementwise / reshape / PReLU: nothing of the neuron's own
            if (name, kind) in seen:
                continue
            seen.add((name, kind))
            members.append((name, kind, ridx, midx))
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() == 0:
                    continue
                dim = _out_dim(mod) if pname == "weight" and kind != "bn" else 0
                if p.shape[dim] != getattr(mod, "out_channels", getattr(mod, "out_features",
                                                                         getattr(mod, "num_features", p.shape[dim]))):
                    continue
                params.append((f"{name}.{pname}" if name else pname, dim, ridx, midx))
        if not consumers or not any(k in ("layer", "depthwise") for _, k, _, _ in members):
            continue
        groups.append(NeuronGroup(names[root_mod], size, members, params, consumers))
    return groups


def group_alive(group: NeuronGroup, masks: Masks) -> torch.Tensor:
    """Per neuron of the group: does any of its parameters survive in ``masks``?"""
    alive = torch.zeros(group.size, dtype=torch.bool)
    for pname, dim, ridx, midx in group.params:
        m = masks[pname].detach().cpu()
        rows = m.movedim(dim, 0)[midx].reshape(len(midx), -1).any(1)
        alive[ridx] |= rows
    return alive


@torch.no_grad()
def neuron_scores(model: nn.Module, group: NeuronGroup, alive: torch.Tensor, score: str = "norm") -> torch.Tensor:
    """Scale-free importance of each neuron of ``group`` by its parameters alone (``norm`` or ``gamma``, see
    :data:`SCORES`; ``taylor`` needs data: :func:`taylor_scores`); dead neurons score 0."""
    if score not in ("norm", "gamma"):
        raise ValueError(f"neuron score must be one of {', '.join(SCORES)}, got {score!r}")
    modules = dict(model.named_modules())
    per_member: list[torch.Tensor] = []
    gammas: list[torch.Tensor] = []
    for name, kind, ridx, midx in group.members:
        mod = modules[name]
        sq = torch.zeros(group.size, dtype=torch.float64)
        for pname, p in mod.named_parameters(recurse=False):
            dim = _out_dim(mod) if pname == "weight" and kind != "bn" else 0
            if p.dim() == 0 or p.shape[dim] <= int(midx.max()):
                continue
            rows = p.detach().movedim(dim, 0)[midx.to(p.device)].reshape(len(midx), -1).double().cpu()
            sq.index_add_(0, ridx, rows.pow(2).sum(1))
        norms = sq.sqrt()
        if kind == "bn" and getattr(mod, "weight", None) is not None:
            g = torch.zeros(group.size, dtype=torch.float64)
            g[ridx] = mod.weight.detach()[midx.to(mod.weight.device)].abs().double().cpu()
            gammas.append(_normalized(g, alive))
        per_member.append(_normalized(norms, alive))
    chosen = gammas if score == "gamma" and gammas else per_member
    out = torch.stack(chosen).mean(0)
    out[~alive] = 0
    return out


def taylor_scores(model: nn.Module, groups: list[NeuronGroup], batches,
                  device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per group, per neuron: mean over ``batches`` of (Σ θ·∂L/∂θ)² over the neuron's parameters (see
    :data:`SCORES`). ``batches`` yields (inputs, labels); the model runs in eval mode (BN on its running statistics,
    as in the validation the bisection uses) and is left unchanged, gradients included."""
    import torch.nn.functional as F

    params = dict(model.named_parameters())
    device = device or next(model.parameters()).device
    saved_grads = {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in params.items()}
    was_training = model.training
    model.eval()
    acc = [torch.zeros(g.size, dtype=torch.float64) for g in groups]
    n = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()), allow_unused=True)
            gmap = dict(zip(params, grads))
            for gi, group in enumerate(groups):
                contrib = torch.zeros(group.size, dtype=torch.float64)
                for pname, dim, ridx, midx in group.params:
                    g = gmap[pname]
                    if g is None:
                        continue
                    prod = (params[pname].detach() * g).movedim(dim, 0)[midx.to(g.device)]
                    contrib.index_add_(0, ridx, prod.reshape(len(midx), -1).sum(1).double().cpu())
                acc[gi] += contrib.pow(2)
            n += 1
    finally:
        model.train(was_training)
        for name, p in params.items():
            p.grad = saved_grads[name]
    return [a / max(n, 1) for a in acc]


def neuron_macs(model: nn.Module, groups: list[NeuronGroup], input_shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Per group, per neuron: the multiply-accumulates it costs in one inference — its share of every member layer
    that computes it (MACs ÷ output channels) and of every layer that reads it (MACs ÷ input channels or
    features). What removing the neuron saves, to first order; the cost of ``--neuron-cost macs``."""
    from ..summary import summarize

    macs = {r.name: r.macs for r in summarize(model, tuple(input_shape)).layers}
    modules = dict(model.named_modules())
    out = []
    for group in groups:
        cost = torch.zeros(group.size, dtype=torch.float64)
        for name, kind, ridx, _ in group.members:
            if kind in ("layer", "depthwise") and name in macs:
                mod = modules[name]
                units = getattr(mod, "out_channels", getattr(mod, "out_features", 1))
                cost.index_add_(0, ridx, torch.full((len(ridx),), macs[name] / units, dtype=torch.float64))
        for name, ridx, _ in group.consumers:
            if name in macs:
                mod = modules[name]
                units = getattr(mod, "in_channels", getattr(mod, "in_features", 1))
                cost.index_add_(0, ridx, torch.full((len(ridx),), macs[name] / units, dtype=torch.float64))
        out.append(cost)
    return out


def _normalized(values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    ref = values[alive].mean() if alive.any() else values.new_tensor(0.0)
    return values / ref if float(ref) > 0 else torch.zeros_like(values)


def neuron_masks(groups: list[NeuronGroup], masks: Masks, pruned: list[tuple[int, int]]) -> Masks:
    """``masks`` with every parameter of the (group index, neuron) pairs in ``pruned`` set to False."""
    out = {k: v.clone() for k, v in masks.items()}
    by_group: dict[int, list[int]] = {}
    for g, r in pruned:
        by_group.setdefault(g, []).append(r)
    for g, rs in by_group.items():
        chosen = torch.zeros(groups[g].size, dtype=torch.bool)
        chosen[torch.as_tensor(rs, dtype=torch.long)] = True
        for pname, dim, ridx, midx in groups[g].params:
            sel = midx[chosen[ridx]]
            if len(sel):
                view = out[pname].movedim(dim, 0)
                view[sel.to(view.device)] = False
    return out


@dataclasses.dataclass
class NeuronThreshold:
    """The outcome of one neuron-level bisection."""

    masks: Masks
    pruned: int
    """Neurons newly pruned."""
    score: float
    """The largest score pruned (0 when none): the neuron-level analogue of T."""
    value: float | None
    """The criterion's value at the chosen set (e.g. the validation loss)."""
    evaluations: int
    per_group: dict[str, int]
    """Root layer → neurons newly pruned there."""


@torch.no_grad()
def find_neuron_threshold(model: nn.Module, masks: Masks, groups: list[NeuronGroup],
                          evaluate: Callable[[nn.Module], float], admissible: Callable[[float], bool],
                          score: str = "norm",
                          progress: Callable[[int, float], None] | None = None,
                          scores: list[torch.Tensor] | None = None,
                          costs: list[torch.Tensor] | None = None,
                          enough: Callable[[dict[str, int]], bool] | None = None) -> NeuronThreshold:
    """Prune the largest set of lowest-scored alive neurons for which ``admissible(evaluate(pruned model))`` holds.

    ``scores`` (one tensor per group, e.g. from :func:`taylor_scores`) replaces the parameter-based ``score``;
    ``costs`` (e.g. :func:`neuron_macs`, or marginal latencies from :mod:`edgeprune.latency`; positive) divide it,
    so at equal importance the neurons that save most go first. ``enough(widths)`` (root → alive neurons) caps the
    search: only the shortest prefix of the ranking for which it holds is a candidate (a latency target: prune no
    more than needed to reach it; nothing when it already holds). Every group keeps at least one alive neuron (its
    highest-scored one is never a candidate). The model is left unchanged; apply the returned masks to prune.
    """
    if scores is None and score == "taylor":
        raise ValueError("the taylor score needs data: pass scores=taylor_scores(model, groups, batches)")
    candidates: list[tuple[float, int, int]] = []
    for gi, group in enumerate(groups):
        alive = group_alive(group, masks)
        if int(alive.sum()) <= 1:
            continue
        s = scores[gi].clone() if scores is not None else neuron_scores(model, group, alive, score)
        if costs is not None:
            s = s / costs[gi].clamp_min(1e-12)
        s[~alive] = 0
        order = [int(r) for r in torch.argsort(s, stable=True) if bool(alive[r])]
        candidates += [(float(s[r]), gi, r) for r in order[:-1]]  # the best neuron of each group stays
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    if enough is not None:
        widths = {g.root: int(group_alive(g, masks).sum()) for g in groups}
        if enough(widths):
            candidates = []
        for k, (_, gi, _) in enumerate(candidates, 1):
            widths[groups[gi].root] -= 1
            if enough(widths):
                candidates = candidates[:k]
                break
    if not candidates:
        return NeuronThreshold(masks, 0, 0.0, None, 0, {})
    ks = torch.arange(1, len(candidates) + 1, dtype=torch.float64)
    k, value, evals = search_masks(
        model, ks, lambda c: neuron_masks(groups, masks, [(g, r) for _, g, r in candidates[:int(c)]]), evaluate,
        admissible, progress)
    if k is None:
        return NeuronThreshold(masks, 0, 0.0, None, evals, {})
    k = int(k)
    chosen = candidates[:k]
    per_group: dict[str, int] = {}
    for _, g, _ in chosen:
        per_group[groups[g].root] = per_group.get(groups[g].root, 0) + 1
    return NeuronThreshold(neuron_masks(groups, masks, [(g, r) for _, g, r in chosen]), k, chosen[-1][0],
                           value, evals, per_group)


def traceable_neuron_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[NeuronGroup]:
    """:func:`neuron_groups`, or — when torch-pruning cannot trace the whole model (ShuffleNetV2) — the groups
    inside each part it can trace (the parts exact surgery cuts, see edgeprune.surgery.parts), named from the
    whole model. A part keeps its output width, so its output layer's group is left out like a model's."""
    from ..surgery.parts import TraceError, input_fed_depthwise, record_part_inputs

    try:
        return neuron_groups(model, input_shape)
    except TraceError as exc:
        reason = str(exc)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
        inputs, calls = record_part_inputs(model, [x])
    finally:
        model.train(was_training)
    groups: list[NeuronGroup] = []

    def prefixed(g: NeuronGroup, scope: str) -> NeuronGroup:
        return NeuronGroup(f"{scope}.{g.root}", g.size,
                           [(f"{scope}.{n}", k, r, i) for n, k, r, i in g.members],
                           [(f"{scope}.{n}", d, r, i) for n, d, r, i in g.params],
                           [(f"{scope}.{n}", r, i) for n, r, i in g.consumers])

    def visit(name: str, module: nn.Module) -> None:
        recorded = inputs.get(name)
        if recorded and calls.get(name) == 1 and recorded[0] is not None:
            try:
                part = neuron_groups(module, tuple(recorded[0].shape[1:]))
                fixed = input_fed_depthwise(module, torch.zeros_like(recorded[0]))
                groups.extend(prefixed(g, name) for g in part if not any(n in fixed for n, *_ in g.members))
                return
            except TraceError:
                pass
        for child, sub in module.named_children():
            if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in sub.modules()):
                visit(f"{name}.{child}", sub)

    for child, sub in model.named_children():
        if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in sub.modules()):
            visit(child, sub)
    log.warning("neuron groups: torch-pruning cannot trace the whole model (%s); %d groups inside its traceable "
                "parts, the channels between them stay", reason.split(" (")[0], len(groups))
    return groups
