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


def kill_random_channels(model: nn.Module, input_shape: tuple[int, ...], fraction: float = 0.5,
                         constant_fraction: float = 0.3, seed: int = 0) -> list[DeadChannel]:
    """Kill about ``fraction`` of each coupled group's channels (never all) in place; a ``constant_fraction`` of
    them emit a positive constant instead of zero. Groups with grouped convs or unsupported layers are left alone."""
    import torch_pruning as tp

    from .plan import _allowed_types, is_grouped_conv
    from .replay import build_graph

    g = torch.Generator().manual_seed(seed)
    names = {m: n for n, m in model.named_modules()}
    x = torch.zeros((1, *input_shape), dtype=next(model.parameters()).dtype)
    output_layer = model.get_submodule(producer_order(model, x)[-1])
    dg = build_graph(model, tuple(input_shape))
    allowed = _allowed_types()
    t = tp.ops.OPTYPE
    dead: list[DeadChannel] = []
    for group in list(dg.get_all_groups(ignored_layers=[output_layer],
                                        root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR))):
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
        members: dict[int, list] = {r: [] for r in chosen}
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
        root = names[items[0].dep.target.module]
        dead += [DeadChannel(root, r, constant[r], members[r]) for r in chosen]
    return dead
