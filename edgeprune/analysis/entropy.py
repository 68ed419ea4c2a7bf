"""PSP-entropy of ReLU-activated neurons (Tartaglione et al., "Pruning artificial neural networks: a way to find
well-generalizing, high-entropy sharp minima", ICANN 2020, Sec. 4).

A neuron's binary state is φ'(z) = 1 if its post-synaptic potential z > 0, else 0 (eq. 3). Per class c,
H(z|c) = −Σ_t p[φ'(z)=t|c] log₂ p[φ'(z)=t|c] (eq. 4) and the neuron's entropy is H(z) = Σ_c H(z|c) (eq. 5), in bits,
between 0 and C. The second-order entropy of a pair (i, j) is the same sum over the four joint states
(φ'(z_i), φ'(z_j)) ∈ {00, 01, 10, 11}: between 0 and 2C bits (the paper's "higher-order entropy", Fig. 4b).

Everything here works on counts, so statistics can be streamed batch by batch: per class, the number of samples
``totals[c]``, of on-states per neuron ``on[c, i]`` and of joint on-states per pair ``on11[c, i, j]`` (the matrix
product SᵀS of the 0/1 state matrix S of that class). 0 · log 0 = 0, so a neuron that never changes state within a
class has exactly 0 bits for that class.
"""

from __future__ import annotations

import math

import torch

_LN2 = math.log(2.0)


def _plogp_bits(p: torch.Tensor) -> torch.Tensor:
    """−p log₂ p with 0 log 0 = 0."""
    return -torch.special.xlogy(p, p) / _LN2


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in bits of a binary variable that is 1 with probability ``p`` (eq. 4 for one class)."""
    p = p.to(torch.float64)
    return _plogp_bits(p) + _plogp_bits(1.0 - p)


def first_order_entropy(on: torch.Tensor, totals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PSP-entropy per neuron (eq. 5) and per class (eq. 4).

    ``on``: ``[C, n]`` count of on-states (z > 0) of each neuron over the samples of class c; ``totals``: ``[C]``
    samples per class. Classes without samples contribute 0. Returns ``(H [n], H_classwise [C, n])`` in bits.
    """
    on = on.to(torch.float64)
    totals = totals.to(torch.float64)
    present = totals > 0
    p_on = torch.where(present[:, None], on / totals.clamp_min(1)[:, None], torch.zeros_like(on))
    h = binary_entropy(p_on) * present[:, None]
    return h.sum(0), h


def second_order_entropy(on11: torch.Tensor, on_i: torch.Tensor, on_j: torch.Tensor,
                         totals: torch.Tensor) -> torch.Tensor:
    """Second-order PSP-entropy of neuron pairs: Σ_c −Σ_{a,b∈{0,1}} p[(φ'_i, φ'_j)=(a,b)|c] log₂ p[…|c].

    All arguments are counts per class, class on the first axis: ``on11`` samples where both are on, ``on_i`` /
    ``on_j`` samples where each is on (broadcastable to ``on11``), ``totals`` ``[C]``. Returns the per-pair sum over
    classes (shape of ``on11`` without its first axis).
    """
    on11, on_i, on_j = (t.to(torch.float64) for t in (on11, on_i, on_j))
    totals = totals.to(torch.float64)
    shape = (-1,) + (1,) * (on11.dim() - 1)
    n = totals.view(shape)
    present = (n > 0).to(torch.float64)
    n = n.clamp_min(1)
    p11 = on11 / n
    p10 = (on_i - on11) / n
    p01 = (on_j - on11) / n
    p00 = (n - on_i - on_j + on11) / n
    h = (_plogp_bits(p11) + _plogp_bits(p10) + _plogp_bits(p01) + _plogp_bits(p00)) * present
    return h.sum(0)


def all_pairs_entropy(on: torch.Tensor, on11: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """Second-order entropy of every pair i < j of a layer, from ``on [C, n]`` and ``on11 [C, n, n]``; returns the
    ``n(n−1)/2`` values in row-major order of the strict upper triangle."""
    h = second_order_entropy(on11, on[:, :, None], on[:, None, :], totals)
    n = on.shape[1]
    iu = torch.triu_indices(n, n, offset=1)
    return h[iu[0], iu[1]]


def entropy_from_states(states: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """First-order PSP-entropy [n] straight from a 0/1 (or PSP) matrix ``states [N, n]`` and labels ``[N]``: a
    direct, unstreamed form of eqs. 4–5 used to check the streamed statistics."""
    s = (states > 0).to(torch.float64) if states.dtype != torch.bool else states.to(torch.float64)
    y = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    return first_order_entropy(y.T @ s, y.sum(0))[0]


def summary_stats(values: torch.Tensor) -> dict:
    """Mean, spread and quantiles of a 1-D tensor of entropies (JSON-ready floats)."""
    v = values.detach().to(torch.float64).flatten()
    if v.numel() == 0:
        return {"count": 0}
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)) if v.numel() <= 16_000_000 else None
    out = {"count": int(v.numel()), "mean": float(v.mean()), "std": float(v.std(unbiased=False)),
           "min": float(v.min()), "max": float(v.max()), "zero_fraction": float((v == 0).to(torch.float64).mean())}
    if q is not None:
        out.update(p10=float(q[0]), median=float(q[1]), p90=float(q[2]))
    return out
