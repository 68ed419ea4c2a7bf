"""Binary masks over a model's prunable parameters: global magnitude pruning, random structures, pinning.

The *prunable* parameters are the weights and biases of the neuron-producing layers (conv / linear,
:data:`edgeprune.summary.PRODUCERS`), the set magnitude pruning ranks in one global order. BatchNorm scales and
shifts are not ranked (their magnitudes are not comparable with weights) and stay dense.

A mask is ``{parameter name: bool tensor}`` with True where the parameter survives.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ConfigError, ModelError
from ..summary import PRODUCERS

log = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights and biases of the model's conv / linear layers, by their ``named_parameters`` name."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, PRODUCERS):
            continue
        for p_name, p in mod.named_parameters(recurse=False):
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    if not out:
        raise ModelError("the model has no conv or linear layer to prune")
    return out


def masks_from_zeros(model: nn.Module) -> Masks:
    """The mask a pruned model carries implicitly: True where a prunable parameter is nonzero."""
    return {n: p.detach().ne(0).cpu() for n, p in prunable_parameters(model).items()}


def sparsity_of(masks: Masks) -> float:
    """Fraction of pruned (False) entries over all masked parameters."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def magnitude_masks(model: nn.Module, sparsity: float) -> Masks:
    """Global magnitude pruning: drop the ``round(sparsity · N)`` prunable parameters of smallest |θ| (one threshold
    for the whole network, as in the one-shot baselines of the pruning-minima paper, Sec. 2). Ties at the threshold
    are broken by position so the count is exact."""
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
        out[name] = keep[start: start + p.numel()].view_as(p.detach().cpu())
        start += p.numel()
    return out


def random_structure_masks(masks: Masks, seed: int) -> Masks:
    """Same number of survivors in every parameter tensor as ``masks``, at uniformly random positions (the paper's
    "random structure" control, Sec. 5)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.items():
        kept = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:kept]] = True
        out[name] = flat.view_as(m)
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
    """Zero every pruned entry in place."""
    check_masks(model, masks)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        params[name].mul_(m.to(params[name].device, params[name].dtype))
    return model


def pinning_hooks(model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer
                  ) -> tuple[Callable, Callable[[], None]]:
    """``(before_step, after_step)`` for :func:`edgeprune.train.train_epoch` that keep pruned parameters at exactly
    zero: gradients of pruned entries are zeroed before the step (so weight decay and momentum never move them) and
    after it the mask is re-applied to the parameters and to SGD's momentum buffers."""
    check_masks(model, masks)
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(params[n].device, params[n].dtype)) for n, m in masks.items()]

    @torch.no_grad()
    def before_step(_model, _x, _y, _logits) -> None:
        for p, m in pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step() -> None:
        for p, m in pairs:
            p.mul_(m)
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(m)

    return before_step, after_step
