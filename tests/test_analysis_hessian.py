"""Top Hessian eigenvalues over surviving parameters against the full Hessian's eigvalsh."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from edgeprune.analysis.hessian import make_hvp, survivors_of, top_hessian_eigenvalues
from edgeprune.masks import apply_masks_, sparsity_masks
from edgeprune.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(arch: str, sparsity: float, shape):
    torch.manual_seed(0)
    model = create_model(arch).double().eval()
    apply_masks_(model, sparsity_masks(model, sparsity))
    x = torch.randn(48, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (48,))
    return model, [(x[:20], y[:20]), (x[20:], y[20:])], x, y


def _full_hessian_eigs(model, x, y):
    """Independent truth: torch.autograd.functional.hessian of the loss as a function of the surviving entries."""
    surv = survivors_of(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss(theta):
        params, start = dict(base), 0
        for name, p, idx in zip(surv.names, surv.params, surv.index):
            flat = torch.zeros(p.numel(), dtype=p.dtype).index_put((idx,), theta[start: start + idx.numel()])
            params[name] = flat.view_as(p)
            start += idx.numel()
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    theta0 = surv.gather([p.detach() for p in surv.params])
    h = torch.autograd.functional.hessian(loss, theta0)
    assert torch.allclose(h, h.T, atol=1e-10)
    return torch.linalg.eigvalsh(h), surv.dim


@pytest.mark.parametrize("arch,shape,sparsity", [("tiny-mlp", (1, 4, 4), 0.4), ("tiny-cnn", (1, 8, 8), 0.5)])
def test_lanczos_matches_full_hessian(arch, shape, sparsity):
    model, batches, x, y = _setup(arch, sparsity, shape)
    eigs, dim = _full_hessian_eigs(model, x, y)
    total = sum(p.numel() for p in model.parameters())
    assert dim < total  # pruned entries are really excluded
    result = top_hessian_eigenvalues(model, batches, k=5, method="lanczos", iters=dim)
    assert result["parameters_surviving"] == dim
    assert result["eigenvalues"] == pytest.approx(eigs.flip(0)[:5].tolist(), rel=1e-6, abs=1e-9)


def test_short_lanczos_finds_the_top_eigenvalue():
    model, batches, x, y = _setup("tiny-mlp", 0.4, (1, 4, 4))
    eigs, _ = _full_hessian_eigs(model, x, y)
    result = top_hessian_eigenvalues(model, batches, k=1, method="lanczos", iters=40)
    assert result["eigenvalues"][0] == pytest.approx(float(eigs[-1]), rel=1e-4)


def test_power_iteration_with_deflation_matches_largest_magnitudes():
    model, batches, x, y = _setup("tiny-mlp", 0.4, (1, 4, 4))
    eigs, _ = _full_hessian_eigs(model, x, y)
    by_magnitude = eigs[eigs.abs().argsort(descending=True)]
    assert float(by_magnitude[0].abs() - by_magnitude[1].abs()) > 0.05 * float(by_magnitude[0].abs())
    result = top_hessian_eigenvalues(model, batches, k=2, method="power", iters=3000)
    assert result["eigenvalues"][0] == pytest.approx(float(by_magnitude[0]), rel=1e-4)
    assert result["eigenvalues"][1] == pytest.approx(float(by_magnitude[1]), rel=1e-2)


def test_hvp_ignores_pruned_entries_and_is_linear():
    model, batches, _, _ = _setup("tiny-mlp", 0.4, (1, 4, 4))
    surv = survivors_of(model)
    hvp = make_hvp(model, batches, surv)
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(surv.dim, generator=g, dtype=torch.float64), torch.randn(surv.dim, generator=g,
                                                                                  dtype=torch.float64)
    assert torch.allclose(hvp(2 * u + v), 2 * hvp(u) + hvp(v), atol=1e-10)
    assert float(u @ hvp(v)) == pytest.approx(float(v @ hvp(u)), rel=1e-8)  # symmetric
