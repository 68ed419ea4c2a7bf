"""Training loss on the plane through two solutions (pruning-minima paper, Fig. 2a, after Goodfellow et al.).

The plane is θ(α, β) = (1 − α)·θ_A + α·θ_B + β·d: α = 0 is A, α = 1 is B exactly (the convex form makes both
points bit-identical to the solutions), and d is a random direction orthogonal to B − A:

1. d ~ N(0, I), filter-normalized (Li et al., 2018): each output filter / row of a conv / linear weight gets the
   norm of the same filter of the midpoint (θ_A + θ_B)/2; 1-D parameters (biases, BatchNorm) get d = 0.
   ``support="union"`` also zeroes d outside the entries nonzero in A or B (stay in the two sparse subspaces).
2. d ← d − (d·u / u·u) u with u = B − A restricted to d's support (Gram–Schmidt; d stays zero where it was), then
   rescaled so ‖d‖ = ‖B − A‖: both axes are in units of the distance between the solutions. Orthogonalization
   slightly perturbs the per-filter norms of step 1.

Floating-point buffers (BatchNorm statistics) are interpolated along α only. The loss is the mean cross-entropy on
a fixed subset of training samples with the model in eval mode. Grid: α = i / steps, β = j / steps for integers i,
j, so the grid contains (0, 0) and (1, 0) exactly.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ModelError

log = logging.getLogger(__name__)

SUPPORTS = ("dense", "union")


def _check_same_arch(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise ModelError("the two models do not have the same architecture (same parameter names and shapes); "
                         "compare masked checkpoints, not models after surgery")


def orthogonal_direction(a: nn.Module, b: nn.Module, seed: int = 0, support: str = "dense") -> dict[str, torch.Tensor]:
    """The random, filter-normalized direction d ⟂ (B − A) with ‖d‖ = ‖B − A‖ (module docstring), per parameter."""
    if support not in SUPPORTS:
        raise ConfigError(f"support must be one of {', '.join(SUPPORTS)}, got {support!r}")
    _check_same_arch(a, b)
    g = torch.Generator().manual_seed(seed)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    d, u = {}, {}
    for name, p in pa.items():
        wa, wb = p.detach().cpu().to(torch.float64), pb[name].detach().cpu().to(torch.float64)
        u[name] = wb - wa
        if wa.dim() < 2:
            d[name] = torch.zeros_like(wa)
            continue
        allowed = ((wa != 0) | (wb != 0)).to(torch.float64) if support == "union" else torch.ones_like(wa)
        r = torch.randn(wa.shape, generator=g, dtype=torch.float64) * allowed
        mid = (wa + wb) / 2
        rn = r.flatten(1).norm(dim=1).clamp_min(1e-30)
        mn = mid.flatten(1).norm(dim=1)
        d[name] = r * (mn / rn).view(-1, *([1] * (r.dim() - 1)))
        u[name] = u[name] * allowed
    # Gram–Schmidt against B − A restricted to d's support (weights, and the union if asked): d·(B − A) is the same
    # dot product, and d stays zero on biases, BatchNorm and pruned-in-both entries.
    uu = sum(float((u[n] * u[n]).sum()) for n in d if pa[n].dim() >= 2)
    du = sum(float((d[n] * u[n]).sum()) for n in d)
    if uu > 0.0:
        for n in d:
            if pa[n].dim() >= 2:
                d[n] = d[n] - (du / uu) * u[n]
    dd = sum(float((v * v).sum()) for v in d.values())
    if dd == 0.0:
        raise ModelError("the random direction vanished (no conv/linear weights?); cannot draw a plane")
    full = sum(float(((pb[n] - pa[n]).detach().double() ** 2).sum()) for n in pa)
    if full == 0.0:
        raise ModelError("the two models have identical parameters; give two different solutions")
    scale = (full / dd) ** 0.5
    return {n: (v * scale).to(pa[n].dtype) for n, v in d.items()}


def plane_grid(steps: int, margin: float, beta_range: float) -> tuple[list[float], list[float]]:
    """α from −margin to 1 + margin and β from −beta_range to beta_range, both in steps of 1/steps (exact 0 and 1)."""
    if steps < 1:
        raise ConfigError(f"--grid must be at least 1, got {steps}")
    if margin < 0 or beta_range < 0:
        raise ConfigError("--margin and --beta-range must be >= 0")
    lo, hi = -round(margin * steps), steps + round(margin * steps)
    alphas = [i / steps for i in range(lo, hi + 1)]
    nb = round(beta_range * steps)
    betas = [j / steps for j in range(-nb, nb + 1)]
    return alphas, betas


@torch.no_grad()
def mean_loss(model: nn.Module, batches, device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy over ``batches`` (the same arithmetic as :func:`edgeprune.train.evaluate`)."""
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
        n += y.numel()
    return total / max(n, 1)


@torch.no_grad()
def loss_plane(a: nn.Module, b: nn.Module, batches, steps: int = 8, margin: float = 0.5, beta_range: float = 1.0,
               seed: int = 0, support: str = "dense", device: torch.device | str = "cpu",
               description: str | None = "loss plane") -> dict:
    """Loss on the grid of the plane through ``a`` and ``b`` (module docstring). Returns ``alphas``, ``betas``,
    ``loss`` (``[len(betas)][len(alphas)]``), ``loss_a``, ``loss_b`` (the grid values at the solutions) and
    ``distance`` ‖B − A‖."""
    from .._progress import make_progress

    _check_same_arch(a, b)
    alphas, betas = plane_grid(steps, margin, beta_range)
    data = [(x, y) for x, y in batches]
    d = orthogonal_direction(a, b, seed, support)
    sa = {k: v.detach().to(device) for k, v in a.state_dict().items()}
    sb = {k: v.detach().to(device) for k, v in b.state_dict().items()}
    d = {k: v.to(device) for k, v in d.items()}
    probe = copy.deepcopy(a).to(device)
    distance = sum(float((sb[n].double() - sa[n].double()).pow(2).sum()) for n in d) ** 0.5
    grid = [[0.0] * len(alphas) for _ in betas]
    with make_progress() as progress:
        task = progress.add_task(description, total=len(alphas) * len(betas), info="") if description else None
        for j, beta in enumerate(betas):
            for i, alpha in enumerate(alphas):
                state = {}
                for k, va in sa.items():
                    if not va.is_floating_point():
                        state[k] = va
                        continue
                    v = va * (1.0 - alpha) + sb[k] * alpha
                    if k in d and beta != 0.0:
                        v = v + d[k] * beta
                    state[k] = v
                probe.load_state_dict(state)
                grid[j][i] = mean_loss(probe, data, device)
                if task is not None:
                    progress.advance(task)
    j0 = betas.index(0.0)
    return {"alphas": alphas, "betas": betas, "loss": grid, "loss_a": grid[j0][alphas.index(0.0)],
            "loss_b": grid[j0][alphas.index(1.0)], "distance": distance, "seed": seed, "support": support,
            "samples": sum(int(y.numel()) for _, y in data)}
