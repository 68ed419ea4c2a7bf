"""Explicit parameter masks (name → bool tensor, True = alive) and pinning (SeReNe eq. 23).

A pruned parameter stays exactly zero: its gradient is zeroed before the optimizer step, the parameter and its
optimizer state (momentum buffer) are zeroed after it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

Masks = dict[str, torch.Tensor]


def full_masks(model: nn.Module) -> Masks:
    """All parameters alive."""
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}


def masks_from_zeros(model: nn.Module) -> Masks:
    """Pin what is already zero (e.g. a model pruned earlier)."""
    return {n: p.detach().ne(0) for n, p in model.named_parameters()}


def magnitude_masks(model: nn.Module, masks: Masks, threshold: float) -> Masks:
    """SeReNe eq. 22: prune every parameter with |θ| ≤ T (on top of what ``masks`` already pruned)."""
    return {n: masks[n] & p.detach().abs().gt(threshold) for n, p in model.named_parameters()}


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Masks) -> nn.Module:
    for n, p in model.named_parameters():
        p.mul_(masks[n].to(p.dtype))
    return model


@torch.no_grad()
def zero_pinned_grads_(model: nn.Module, masks: Masks) -> None:
    for n, p in model.named_parameters():
        if p.grad is not None:
            p.grad.mul_(masks[n].to(p.grad.dtype))


@torch.no_grad()
def pin_(model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero pruned parameters and their optimizer state (SeReNe eq. 23)."""
    for n, p in model.named_parameters():
        m = masks[n].to(p.dtype)
        p.mul_(m)
        if optimizer is not None:
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(m)


def count_alive(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))
