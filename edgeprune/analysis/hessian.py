"""Top Hessian eigenvalues of the training loss at a (pruned) solution: the sharpness measure of the pruning-minima
paper (Fig. 2b, which used the power-iteration code of Golmant et al.).

The loss is the mean cross-entropy over a fixed set of training batches, with the model in eval mode (BatchNorm uses
its running statistics, dropout is off) so the function is deterministic. Only the *surviving* coordinates enter:
the Hessian is the block of ∇²L over the parameter entries that are nonzero at the solution, i.e. the curvature
inside the sparse subspace the pruned network lives in.

Hessian-vector products use double backward (Pearlmutter's trick), one batch at a time so memory stays that of a
single batch. Two eigen-solvers:

* ``lanczos`` (default): Lanczos with full re-orthogonalization; the largest *algebraic* Ritz values of the
  tridiagonal matrix, with the residual norms ‖Hy − θy‖ of their Ritz vectors (k extra products). Stores ``iters``
  vectors of the parameter count.
* ``power``: power iteration with deflation; the largest eigenvalues in *magnitude*, one at a time.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ModelError

log = logging.getLogger(__name__)

METHODS = ("lanczos", "power")


@dataclasses.dataclass
class Survivors:
    """The nonzero entries of every trainable parameter, as flat index tensors."""

    names: list[str]
    params: list[nn.Parameter]
    index: list[torch.Tensor]

    @property
    def dim(self) -> int:
        return sum(int(i.numel()) for i in self.index)

    def scatter(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector over survivors → full-shape tensors (zero at pruned entries)."""
        out, start = [], 0
        for p, idx in zip(self.params, self.index):
            full = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            full[idx] = v[start: start + idx.numel()].to(p.dtype)
            out.append(full.view_as(p))
            start += idx.numel()
        return out

    def gather(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1)[idx] for t, idx in zip(tensors, self.index)])


def survivors_of(model: nn.Module) -> Survivors:
    names, params, index = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        idx = p.detach().reshape(-1).ne(0).nonzero().flatten()
        if idx.numel():
            names.append(name)
            params.append(p)
            index.append(idx)
    if not params:
        raise ModelError("the model has no nonzero trainable parameter")
    return Survivors(names, params, index)


def make_hvp(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], survivors: Survivors,
             device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ H v for the Hessian of the mean cross-entropy over ``batches`` restricted to ``survivors``."""
    n_total = sum(int(y.numel()) for _, y in batches)
    if n_total == 0:
        raise ConfigError("no samples to compute the loss on")

    def hvp(v: torch.Tensor) -> torch.Tensor:
        vs = survivors.scatter(v)
        acc = None
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, reduction="sum") / n_total
            grads = torch.autograd.grad(loss, survivors.params, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs))
            hv = torch.autograd.grad(dot, survivors.params)
            flat = survivors.gather([h.detach() for h in hv]).to(torch.float64)
            acc = flat if acc is None else acc + flat
        return acc

    return hvp


def lanczos_top(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int, iters: int, seed: int = 0,
                device: torch.device | str = "cpu") -> tuple[list[float], list[float]]:
    """The ``k`` largest Ritz values of ``iters`` Lanczos steps (full re-orthogonalization) and the residual norms
    ‖H y − θ y‖ of their Ritz vectors. With ``iters >= dim`` the values are the exact extreme eigenvalues."""
    m = min(iters, dim)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
    q /= q.norm()
    basis = torch.zeros(m, dim, dtype=torch.float64, device=device)
    alphas, betas = [], []
    beta_prev, q_prev = 0.0, torch.zeros_like(q)
    for j in range(m):
        basis[j] = q
        w = hvp(q)
        a = float(w @ q)
        w = w - a * q - beta_prev * q_prev
        for _ in range(2):  # twice is enough for orthogonality to working precision
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        b = float(w.norm())
        alphas.append(a)
        if j == m - 1 or b <= 1e-12 * max(1.0, abs(a)):
            betas.append(b)
            break
        betas.append(b)
        beta_prev, q_prev, q = b, q, w / b
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(t)
    order = torch.argsort(evals, descending=True)[:k]
    # true residuals ‖H y − θ y‖ of the Ritz vectors (one more product each): the classic bound |β_m s_m,i| can
    # fall far below what floating point actually achieves
    residuals = []
    for i in order.tolist():
        y = basis[:n].T @ evecs[:, i].to(device)
        residuals.append(float((hvp(y) - evals[i] * y).norm() / y.norm()))
    return evals[order].tolist(), residuals


def power_top(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int, iters: int, tol: float = 1e-6,
              seed: int = 0, device: torch.device | str = "cpu") -> tuple[list[float], list[float]]:
    """The ``k`` largest-magnitude eigenvalues by power iteration, deflating the ones already found
    (H ← H − Σ λ_j u_j u_jᵀ). Returns the values and each one's residual ‖Hu − λu‖."""
    g = torch.Generator().manual_seed(seed)
    found: list[tuple[float, torch.Tensor]] = []
    residuals = []
    for _ in range(min(k, dim)):
        v = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
        for _lam, u in found:
            v -= (u @ v) * u
        v /= v.norm()
        lam = 0.0
        for it in range(iters):
            w = hvp(v)
            for lj, u in found:
                w -= lj * (u @ v) * u
            new = float(v @ w)
            norm = float(w.norm())
            if norm == 0.0:
                lam = 0.0
                break
            v = w / norm
            converged = abs(new - lam) <= tol * max(abs(new), 1e-12)
            lam = new
            if converged:
                break
        hv = hvp(v)
        for lj, u in found:
            hv -= lj * (u @ v) * u
        lam = float(v @ hv)
        residuals.append(float((hv - lam * v).norm()))
        found.append((lam, v))
    return [lam for lam, _ in found], residuals


def top_hessian_eigenvalues(model: nn.Module, batches, k: int = 5, method: str = "lanczos", iters: int | None = None,
                            seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Top-``k`` eigenvalues of the training-loss Hessian over the model's surviving parameters (see the module
    docstring). ``batches``: an iterable of (inputs, labels), materialized once so every product sees the same data.
    """
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if k < 1:
        raise ConfigError(f"--top must be at least 1, got {k}")
    data = [(x, y.long()) for x, y in batches]
    was_training = model.training
    model.eval().to(device)
    surv = survivors_of(model)
    hvp = make_hvp(model, data, surv, device)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if iters is None:
        iters = max(4 * k, 30) if method == "lanczos" else 100
    try:
        if method == "lanczos":
            values, residuals = lanczos_top(hvp, surv.dim, k, iters, seed, device)
        else:
            values, residuals = power_top(hvp, surv.dim, k, iters, seed=seed, device=device)
    finally:
        model.train(was_training)
    return {"eigenvalues": values, "residuals": residuals, "method": method, "iters": iters, "k": k,
            "parameters_surviving": surv.dim, "parameters_total": total,
            "batches": len(data), "samples": sum(int(y.numel()) for _, y in data)}
