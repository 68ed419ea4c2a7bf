"""Constant folding: a removed channel that carries a constant c adds W[:, k]·c to its consumer's bias.

For a Linear consumer, y = W x + b with x_k ≡ c gives y = W_{:,≠k} x_{≠k} + (b + W_{:,k} c), exact for every
feature (a flattened channel spans several features, each with its own constant). For an unpadded, ungrouped conv
every output position sees c under every tap, so the contribution is c · Σ_taps W[:, k]. Padded convs see zeros at
the borders instead of c, which is why plan.fold_blocker refuses them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def apply_folds(model: nn.Module, folds: dict[str, dict[int, float]]) -> list[str]:
    """Add each consumer's constant inputs into its bias (creating a bias if it has none).
    Returns the names of layers that received a new bias (the rebuilt architecture must have them too)."""
    added = []
    for name, entries in folds.items():
        if not entries:
            continue
        layer = model.get_submodule(name)
        idx = torch.tensor(sorted(entries), dtype=torch.long, device=layer.weight.device)
        val = torch.tensor([entries[i] for i in sorted(entries)], dtype=torch.float64, device=layer.weight.device)
        w = layer.weight.detach()[:, idx].double()
        if w.dim() > 2:
            w = w.flatten(2).sum(2)
        delta = w @ val
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
            added.append(name)
        with torch.no_grad():
            layer.bias.copy_((layer.bias.double() + delta).to(layer.bias.dtype))
    return added


def add_zero_biases(model: nn.Module, names: list[str]) -> None:
    """Give the named layers a zero bias (rebuilding a model whose surgery folded constants into new biases)."""
    for name in names:
        layer = model.get_submodule(name)
        if layer.bias is None:
            out = layer.weight.shape[0]
            layer.bias = nn.Parameter(torch.zeros(out, dtype=layer.weight.dtype, device=layer.weight.device))
