"""Threshold bisection (SeReNe Sec. IV-B) and masks."""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeprune.threshold import find_threshold, full_masks, largest_admissible, threshold_masks


@given(st.integers(1, 300), st.integers(0, 300))
@settings(max_examples=60, deadline=None)
def test_largest_admissible_on_monotone_predicate(n, k):
    cands = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    limit = float(cands[min(k, n - 1)]) if k < n else 2.0
    calls = []

    def admissible(t):
        calls.append(t)
        return t <= limit

    t, evals = largest_admissible(cands, admissible)
    assert t == limit if k < n else t == float(cands[-1])
    assert evals == len(calls) <= n.bit_length() + 1


def test_largest_admissible_none_when_nothing_fits():
    t, _ = largest_admissible(torch.tensor([1.0, 2.0]), lambda t: False)
    assert t is None


def test_find_threshold_on_synthetic_monotone_loss():
    """loss = sum of |pruned| magnitudes: monotone in T; the largest admissible T is known in closed form."""
    torch.manual_seed(0)
    model = nn.Linear(10, 10)
    masks = full_masks(model)
    weights = torch.cat([p.detach().abs().flatten() for p in model.parameters()]).sort().values
    cum = weights.cumsum(0)
    bound = float(cum[40]) + 1e-9  # exactly the 41 smallest magnitudes fit

    def loss_fn(m):
        return float(sum((orig.abs() * (p.detach() == 0)).sum() for p, orig in zip(m.parameters(), originals)))

    originals = [p.detach().clone() for p in model.parameters()]
    t, new_masks, loss, evals = find_threshold(model, masks, loss_fn, bound)
    assert t == float(weights[40])
    assert sum(int((~m).sum()) for m in new_masks.values()) == 41
    assert loss <= bound
    # The model is left as it was.
    for p, orig in zip(model.parameters(), originals):
        assert torch.equal(p.detach(), orig)
    assert evals <= weights.numel().bit_length() + 1


def test_threshold_masks_keep_already_pruned():
    model = nn.Linear(3, 2)
    masks = full_masks(model)
    masks["weight"][0, 0] = False
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.01)
    new = threshold_masks(model, masks, 0.5)
    assert not new["weight"][0, 0] and new["weight"].sum() == 5 and not new["bias"].any()
