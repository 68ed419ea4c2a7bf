"""Random dead sets for tests and benchmarks: kill coupled channels the way thresholding leaves them.

A killed channel has all-zero weight rows in every producer of its coupled group (torch-pruning's grouping). Its
biases and BN parameters are either zero (a *zero* channel) or set so the channel emits a positive constant (a
*constant* channel: weights zero, bias / BN β nonzero — what SeReNe's reference code left behind).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .detect import CONSUMERS, CONVS, producer_order


@dataclasses.dataclass
class DeadChannel:
    root: str
    index: int
    constant: bool
    members: list[tuple[str, str, list[int]]]
    """(layer name, role, indices in that layer): role is "producer", "bn", "consumer" or "other"."""


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm random running statistics and affine parameters, so BN is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _zero_rows(layer: nn.Module, idxs: list[int]) -> None:
    with torch.no_grad():
        if isinstance(layer, CONVS) and layer.transposed:
            layer.weight[:, idxs] = 0
        else:
            layer.weight[idxs] = 0


def _kill_roots(items, names: dict, constant: dict[int, bool], g: torch.Generator) -> dict[int, list]:
    """Kill the given root channels of one torch-pruning group in place (producer rows zero, bias / BN set to zero
    or to a positive constant); return root → its members."""
    import torch_pruning as tp

    t = tp.ops.OPTYPE
    members: dict[int, list] = {r: [] for r in constant}
    for it in items:
        node = it.dep.target
        mod = node.module
        pairs = [(int(i), int(r)) for i, r in zip(it.idxs, it.root_idxs) if int(r) in constant]
        if not pairs or mod not in names:
            for i, r in pairs:
                members[r].append((node.name, "other", [i]))
            continue
        name = names[mod]
        is_consumer = node.type in (t.CONV, t.LINEAR) and it.dep.handler.__name__ == "prune_in_channels"
        for i, r in pairs:
            if is_consumer:
                members[r].append((name, "consumer", [i]))
            elif isinstance(mod, CONSUMERS):
                _zero_rows(mod, [i])
                if mod.bias is not None:
                    with torch.no_grad():
                        mod.bias[i] = float(torch.rand(1, generator=g)) + 0.5 if constant[r] else 0.0
                members[r].append((name, "producer", [i]))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    if constant[r]:
                        # |γ (c - μ) / σ| stays below ~1.5 for the randomized statistics; β ≥ 2 keeps it positive.
                        mod.weight[i] = float(torch.rand(1, generator=g)) - 0.5
                        mod.bias[i] = float(torch.rand(1, generator=g)) + 2.0
                    else:
                        mod.weight[i] = 0.0
                        mod.bias[i] = 0.0
                members[r].append((name, "bn", [i]))
            else:
                members[r].append((name, "other", [i]))
    return members


def _groups(model: nn.Module, input_shape: tuple[int, ...]):
    import torch_pruning as tp

    from .replay import build_graph

    x = torch.zeros((1, *input_shape), dtype=next(model.parameters()).dtype)
    output_layer = model.get_submodule(producer_order(model, x)[-1])
    dg = build_graph(model, tuple(input_shape))
    return list(dg.get_all_groups(ignored_layers=[output_layer],
                                  root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)))


def kill_random_channels(model: nn.Module, input_shape: tuple[int, ...], fraction: float = 0.5,
                         constant_fraction: float = 0.3, seed: int = 0) -> list[DeadChannel]:
    """Kill about ``fraction`` of each coupled group's channels (never all) in place; a ``constant_fraction`` of
    them emit a positive constant instead of zero. Groups with grouped convs or unsupported layers are left alone
    (:func:`kill_conv_groups` kills those)."""
    from .plan import _allowed_types, is_grouped_conv

    g = torch.Generator().manual_seed(seed)
    names = {m: n for n, m in model.named_modules()}
    allowed = _allowed_types()
    dead: list[DeadChannel] = []
    for group in _groups(model, input_shape):
        items = list(group.items)
        if any(it.dep.target.type not in allowed for it in items):
            continue
        if any(is_grouped_conv(it.dep.target.module) for it in items):
            continue
        c = len(items[0].idxs)
        k = min(c - 1, int(round(fraction * c)))
        if k <= 0:
            continue
        chosen = sorted(torch.randperm(c, generator=g)[:k].tolist())
        constant = {r: bool(torch.rand(1, generator=g) < constant_fraction) for r in chosen}
        members = _kill_roots(items, names, constant, g)
        root = names[items[0].dep.target.module]
        dead += [DeadChannel(root, r, constant[r], members[r]) for r in chosen]
    return dead


def kill_conv_groups(model: nn.Module, input_shape: tuple[int, ...], fraction: float = 0.4,
                     partial_fraction: float = 0.2, constant_fraction: float = 0.3,
                     seed: int = 0) -> dict[str, dict[str, list[int]]]:
    """For every grouped conv (1 < groups < channels), kill about ``fraction`` of its groups whole — the group's
    output channels (its weight rows, BN) and the channels feeding it (their producers' rows, BN) — and, in about
    ``partial_fraction`` of the others, one input channel only. Returns conv name → {"dead": groups killed whole,
    "partial": groups with one dead input}. Convs whose feeding or fed channels also go elsewhere are left alone."""
    from .plan import is_grouped_conv

    g = torch.Generator().manual_seed(seed)
    names = {m: n for n, m in model.named_modules()}
    sides: dict[str, dict[str, tuple]] = {}
    for group in _groups(model, input_shape):
        items = list(group.items)
        for it in items:
            mod = it.dep.target.module
            if is_grouped_conv(mod) and not mod.transposed:
                side = "in" if it.dep.handler.__name__ == "prune_in_channels" else "out"
                pairs = {int(i): int(r) for i, r in zip(it.idxs, it.root_idxs)}
                sides.setdefault(names[mod], {})[side] = (items, pairs)
    result: dict[str, dict[str, list[int]]] = {}
    for name, both in sides.items():
        if set(both) != {"in", "out"}:
            continue
        conv = model.get_submodule(name)
        (in_items, in_map), (out_items, out_map) = both["in"], both["out"]
        # Only convs that own their input and output channels: each root channel maps to one of the conv's.
        if len(set(in_map.values())) != len(in_map) or len(set(out_map.values())) != len(out_map):
            continue
        n = conv.groups
        per_in, per_out = conv.in_channels // n, conv.out_channels // n
        order = torch.randperm(n, generator=g).tolist()
        k = min(n - 1, int(round(fraction * n)))
        dead, rest = sorted(order[:k]), order[k:]
        partial = sorted(rest[: int(round(partial_fraction * n))]) if per_in > 1 else []
        kill_in = {in_map[j * per_in + i] for j in dead for i in range(per_in)}
        kill_in |= {in_map[j * per_in + int(torch.randint(per_in, (1,), generator=g))] for j in partial}
        kill_out = {out_map[j * per_out + o] for j in dead for o in range(per_out)}
        _kill_roots(in_items, names, {r: bool(torch.rand(1, generator=g) < constant_fraction) for r in kill_in}, g)
        _kill_roots(out_items, names, {r: bool(torch.rand(1, generator=g) < constant_fraction) for r in kill_out}, g)
        result[name] = {"dead": dead, "partial": partial}
    return result
