"""The threshold search: bisection for the largest global magnitude T with L(prune(θ, T)) ≤ (1 + TWT)·L̂
(SeReNe Sec. IV-B; LOBSTER eq. 19).

Pruning with T only changes at the distinct magnitudes of the alive parameters, so the search runs over those sorted
values: under the monotonicity the papers assume, it returns the exact largest admissible one in ⌈log2 n⌉ + 1
evaluations.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn as nn

from ..masks import Masks, apply_masks_, threshold_masks

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


def search_masks(model: nn.Module, candidates: torch.Tensor, masks_at: Callable[[float], Masks],
                 evaluate: Callable[[nn.Module], Any], admissible: Callable[[Any], bool],
                 progress: Callable[[float, Any], None] | None = None) -> tuple[float | None, Any, int]:
    """The bisection of :func:`largest_admissible` over ``candidates``, each tried by pruning the model with
    ``masks_at(candidate)``, evaluating it and restoring it. Returns (the chosen candidate or None, its value,
    evaluations); the model is left unchanged."""
    params = dict(model.named_parameters())
    backup = {n: p.detach().clone() for n, p in params.items()}
    values: dict[float, Any] = {}

    @torch.no_grad()
    def trial(c: float) -> bool:
        apply_masks_(model, masks_at(c))
        try:
            value = evaluate(model)
        finally:
            for n, p in params.items():
                p.copy_(backup[n])
        values[c] = value
        if progress is not None:
            progress(c, value)
        log.debug("threshold candidate %.6g: %s", c, value)
        return admissible(value)

    chosen, evals = largest_admissible(candidates, trial)
    return chosen, (values[chosen] if chosen is not None else None), evals


@torch.no_grad()
def find_threshold(model: nn.Module, masks: Masks, loss_fn: Callable[[nn.Module], Any], bound: float | None = None,
                   progress: Callable[[float, Any], None] | None = None,
                   admissible: Callable[[Any], bool] | None = None) -> tuple[float, Masks, Any, int]:
    """Largest T such that ``loss_fn(model pruned at T) ≤ bound``; the model is left unchanged.

    ``admissible(value)`` replaces the bound test when given (``loss_fn`` may then return anything it can judge,
    e.g. a dict of validation metrics with an accuracy target). Returns (T, the new masks, the value at T,
    evaluations). T = 0 and the masks unchanged when nothing can be pruned: the value is then None.
    """
    if admissible is None:
        if bound is None:
            raise ValueError("find_threshold needs a bound or an admissible() test")
        admissible = lambda value: value <= bound  # noqa: E731
    params = dict(model.named_parameters())
    mags = torch.cat([params[n].detach().abs()[masks[n]].flatten().double().cpu() for n in params])
    if mags.numel() == 0:
        return 0.0, masks, None, 0
    candidates = torch.unique(mags)  # sorted ascending
    t, value, evals = search_masks(model, candidates, lambda c: threshold_masks(model, masks, c), loss_fn,
                                   admissible, progress)
    if t is None:
        return 0.0, masks, None, evals
    return t, threshold_masks(model, masks, t), value, evals
