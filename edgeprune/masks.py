"""Parameter masks, the one module for them: ``{parameter name: bool tensor}``, True where the parameter survives.

Every pruning path uses the same set of prunable parameters — *all* of the model's parameters, BatchNorm γ and β
included — and the same pinning, so a one-shot control and a gradual SeReNe run are compared like for like on BN
nets (SeReNe's neurons own their BN channel; a channel whose BN stays dense keeps emitting β).

* :func:`threshold_masks` — SeReNe eq. 22: prune every |θ| ≤ T on top of what is already pruned (the loop's step).
* :func:`sparsity_masks` — global magnitude pruning to a target sparsity (the one-shot baselines of the
  pruning-minima paper, Sec. 2).
* :func:`random_structure_masks` — the same survivor count per tensor at random positions (its Sec. 5 control).
* pinning (SeReNe eq. 23): :func:`pin_` and :func:`zero_pinned_grads_` for the loop, :func:`pinning_hooks` for
  :func:`edgeprune.train.train_epoch` — a pruned parameter, its gradient and its momentum stay exactly zero.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .errors import ConfigError, ModelError

Masks = dict[str, torch.Tensor]


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter of ``model`` by its ``named_parameters`` name (conv / linear weights and biases and BN γ/β)."""
    out = dict(model.named_parameters())
    if not out:
        raise ModelError("the model has no parameters to prune")
    return out


def full_masks(model: nn.Module) -> Masks:
    """All parameters alive."""
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()}


def masks_from_zeros(model: nn.Module) -> Masks:
    """The mask a pruned model carries implicitly: True where a parameter is nonzero (e.g. to pin a model pruned
    earlier, or to read a gradual run's sparsity)."""
    return {n: p.detach().ne(0) for n, p in prunable_parameters(model).items()}


def threshold_masks(model: nn.Module, masks: Masks, threshold: float) -> Masks:
    """SeReNe eq. 22: prune every parameter with |θ| ≤ T (on top of what ``masks`` already pruned)."""
    return {n: masks[n] & p.detach().abs().gt(threshold) for n, p in prunable_parameters(model).items()}


def sparsity_masks(model: nn.Module, sparsity: float) -> Masks:
    """Global magnitude pruning: drop the ``round(sparsity · N)`` parameters of smallest |θ| (one threshold for the
    whole network). Ties at the threshold are broken by position so the count is exact."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    params = prunable_parameters(model)
    flat = torch.cat([p.detach().abs().flatten().cpu() for p in params.values()])
    n_prune = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune > 0:
        # stable sort: equal magnitudes are pruned in parameter order, so the result is deterministic
        order = torch.sort(flat, stable=True).indices
        keep[order[:n_prune]] = False
    out, start = {}, 0
    for name, p in params.items():
        out[name] = keep[start: start + p.numel()].view_as(p.detach().cpu()).to(p.device)
        start += p.numel()
    return out


def random_structure_masks(masks: Masks, seed: int) -> Masks:
    """Same number of survivors in every parameter tensor as ``masks``, at uniformly random positions."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.items():
        kept = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:kept]] = True
        out[name] = flat.view_as(m.cpu()).to(m.device)
    return out


def check_masks(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in params:
            raise ModelError(f"mask for {name!r} but the model has no such parameter")
        if tuple(params[name].shape) != tuple(m.shape):
            raise ModelError(f"mask for {name} has shape {tuple(m.shape)}, parameter has {tuple(params[name].shape)}")


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero every pruned entry in place (parameters without a mask are left as they are)."""
    check_masks(model, masks)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        p = params[name]
        p.mul_(m.to(p.device, p.dtype))
    return model


@torch.no_grad()
def zero_pinned_grads_(model: nn.Module, masks: Masks) -> None:
    for n, p in model.named_parameters():
        if p.grad is not None and n in masks:
            p.grad.mul_(masks[n].to(p.grad.device, p.grad.dtype))


@torch.no_grad()
def pin_(model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero pruned parameters and their optimizer state (SeReNe eq. 23)."""
    for n, p in model.named_parameters():
        if n not in masks:
            continue
        m = masks[n].to(p.device, p.dtype)
        p.mul_(m)
        if optimizer is not None:
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(m)


def pinning_hooks(model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer
                  ) -> tuple[Callable, Callable[[], None]]:
    """``(before_step, after_step)`` for :func:`edgeprune.train.train_epoch` that keep pruned parameters at exactly
    zero: gradients of pruned entries are zeroed before the step (so weight decay and momentum never move them) and
    after it the mask is re-applied to the parameters and to the optimizer's state (:func:`pin_`)."""
    check_masks(model, masks)

    def before_step(_model, _x, _y, _logits) -> None:
        zero_pinned_grads_(model, masks)

    def after_step() -> None:
        pin_(model, masks, optimizer)

    return before_step, after_step


def count_alive(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def sparsity_of(masks: Masks) -> float:
    """Fraction of pruned (False) entries over all masked parameters."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - count_alive(masks) / total if total else 0.0
