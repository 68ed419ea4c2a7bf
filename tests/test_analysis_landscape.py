"""Loss on the plane through two solutions: exact at the solutions, orthogonal filter-normalized direction."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeprune.analysis.landscape import loss_plane, mean_loss, orthogonal_direction, plane_grid
from edgeprune.masks import apply_masks_, sparsity_masks
from edgeprune.models import create_model
from edgeprune.train import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


def _two_solutions(arch="tiny-cnn"):
    torch.manual_seed(0)
    a = create_model(arch)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    apply_masks_(a, sparsity_masks(a, 0.5))
    apply_masks_(b, sparsity_masks(b, 0.7))
    if arch == "tiny-cnn":  # give BN different running statistics so buffers are interpolated too
        b[1].running_mean.fill_(0.3)
    x = torch.randn(60, 1, 8, 8)
    y = torch.randint(0, 3, (60,))
    return a, b, [(x[:32], y[:32]), (x[32:], y[32:])]


def test_grid_contains_the_solutions_exactly():
    alphas, betas = plane_grid(3, 0.5, 1.0)
    assert 0.0 in alphas and 1.0 in alphas and 0.0 in betas
    assert alphas[0] == pytest.approx(-2 / 3) and alphas[-1] == pytest.approx(5 / 3)  # margin rounded to the grid
    assert betas == [j / 3 for j in range(-3, 4)]


def test_loss_is_exact_at_both_solutions():
    a, b, batches = _two_solutions()
    result = loss_plane(a, b, batches, steps=2, margin=0.5, beta_range=0.5, description=None)
    assert result["loss_a"] == evaluate(a, batches)["loss"]
    assert result["loss_b"] == evaluate(b, batches)["loss"]
    assert len(result["loss"]) == len(result["betas"]) and len(result["loss"][0]) == len(result["alphas"])
    assert result["loss_a"] != result["loss_b"]
    # the midpoint of the segment is the averaged model (parameters and BN statistics)
    mid = copy.deepcopy(a)
    mid.load_state_dict({k: (v + b.state_dict()[k]) / 2 if v.is_floating_point() else v
                         for k, v in a.state_dict().items()})
    j0, i_half = result["betas"].index(0.0), result["alphas"].index(0.5)
    assert result["loss"][j0][i_half] == pytest.approx(mean_loss(mid, batches), rel=1e-6)
    # off the line the loss changes
    assert result["loss"][0][result["alphas"].index(0.0)] != result["loss_a"]


def test_direction_is_orthogonal_filter_normalized_and_scaled():
    a, b, _ = _two_solutions()
    d = orthogonal_direction(a, b, seed=1)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    u = {n: (pb[n] - pa[n]).detach().double() for n in pa}
    dot = sum(float((d[n].double() * u[n]).sum()) for n in d)
    uu = sum(float((v * v).sum()) for v in u.values())
    dd = sum(float((d[n].double() ** 2).sum()) for n in d)
    assert abs(dot) < 1e-6 * uu
    assert dd == pytest.approx(uu, rel=1e-5)
    for n, v in d.items():
        if v.dim() < 2:
            assert bool((v == 0).all())  # biases and BN get no random component
    union = orthogonal_direction(a, b, seed=1, support="union")
    for n, v in union.items():
        outside = (pa[n] == 0) & (pb[n] == 0)
        # after Gram–Schmidt the only component outside the union is along B − A, which is zero there too
        assert bool((v[outside] == 0).all())


def test_different_architectures_are_refused():
    from edgeprune.errors import ModelError

    with pytest.raises(ModelError, match="same architecture"):
        loss_plane(create_model("tiny-mlp"), create_model("tiny-cnn"), [], description=None)
