"""The threshold search: bisection for the largest global magnitude T with L(prune(θ, T)) ≤ (1 + TWT)·L̂
(SeReNe Sec. IV-B; LOBSTER eq. 19).

Pruning with T only changes at the distinct magnitudes of the alive parameters, so the search runs over those sorted
values: under the monotonicity the papers assume, it returns the exact largest admissible one in ⌈log2 n⌉ + 1
evaluations.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn

from .masks import Masks, apply_masks_, magnitude_masks

log = logging.getLogger(__name__)


def largest_admissible(candidates: torch.Tensor, admissible: Callable[[float], bool]) -> tuple[float | None, int]:
    """Largest value of the ascending 1-D ``candidates`` for which ``admissible`` holds, assuming it holds on a
    prefix (monotone). Returns (value or None when even the smallest fails, number of evaluations)."""
    lo, hi = -1, len(candidates) - 1  # invariant: candidates[lo] admissible (lo = -1: none yet), beyond hi not
    evals = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        evals += 1
        if admissible(float(candidates[mid])):
            lo = mid
        else:
            hi = mid - 1
    return (float(candidates[lo]) if lo >= 0 else None), evals


@torch.no_grad()
def find_threshold(model: nn.Module, masks: Masks, loss_fn: Callable[[nn.Module], float], bound: float,
                   progress: Callable[[float, float], None] | None = None) -> tuple[float, Masks, float, int]:
    """Largest T such that ``loss_fn(model pruned at T) ≤ bound``; the model is left unchanged.

    Returns (T, the new masks, the loss at T, evaluations). T = 0 and the masks unchanged when nothing can be
    pruned within the bound.
    """
    params = dict(model.named_parameters())
    mags = torch.cat([params[n].detach().abs()[masks[n]].flatten().double().cpu() for n in params])
    if mags.numel() == 0:
        return 0.0, masks, loss_fn(model), 1
    candidates = torch.unique(mags)  # sorted ascending
    backup = {n: p.detach().clone() for n, p in params.items()}
    losses: dict[float, float] = {}

    def admissible(t: float) -> bool:
        trial = magnitude_masks(model, masks, t)
        apply_masks_(model, trial)
        loss = loss_fn(model)
        for n, p in params.items():
            p.copy_(backup[n])
        losses[t] = loss
        if progress is not None:
            progress(t, loss)
        log.debug("threshold T=%.3g: val loss %.4f (bound %.4f)", t, loss, bound)
        return loss <= bound

    t, evals = largest_admissible(candidates, admissible)
    if t is None:
        return 0.0, masks, loss_fn(model), evals + 1
    return t, magnitude_masks(model, masks, t), losses[t], evals
