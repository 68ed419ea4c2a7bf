"""SeReNe sensitivities (eqs. 4, 10, 13, 19) against brute-force Jacobians on tiny networks, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeprune.errors import ModelError
from edgeprune.models import create_model, input_shape_of
from edgeprune.regularize import find_neurons, neuron_sensitivity

TINY = ["tiny-mlp", "tiny-cnn", "tiny-resnet"]

pytestmark = pytest.mark.usefixtures("one_thread")



def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = create_model(name).double()
    # Non-trivial BatchNorm statistics and affine parameters so BN's Jacobian is not the identity.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(-1.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def _brute_jacobians(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """d logits / d δ for every PSP, by injecting an additive per-channel δ with our own hooks and differentiating
    with torch.autograd.functional.jacobian (independent of the library's capture code). Returns per layer the
    per-sample Jacobian B × C × neurons (samples are independent in eval mode)."""
    ng = find_neurons(model)
    out = {}
    for nl in ng.layers:
        mod = nl.psp_module

        def f(delta, mod=mod):
            def hook(module, inputs, o):
                return o + delta.view(*delta.shape, *([1] * (o.dim() - 2)))

            h = mod.register_forward_hook(hook)
            try:
                return model(x)
            finally:
                h.remove()

        delta0 = torch.zeros(x.shape[0], nl.num_neurons, dtype=x.dtype)
        jac = torch.autograd.functional.jacobian(f, delta0)  # B × C × B × N
        idx = torch.arange(x.shape[0])
        out[nl.name] = jac[idx, :, idx, :]  # B × C × N
    return out


def _psps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    ng = find_neurons(model)
    store, handles = {}, []
    for nl in ng.layers:
        handles.append(nl.psp_module.register_forward_hook(lambda m, i, o, n=nl.name: store.__setitem__(n, o.detach())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return store


def _abs_product_ub(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 13 by brute force for Sequential models: per sample, the product of the absolute Jacobian of every
    module after the PSP (each computed with torch.autograd.functional.jacobian), summed over classes and over the
    channel's positions."""
    ng = find_neurons(model)
    mods = list(model)
    names = [n for n, _ in model.named_children()]
    out = {}
    for nl in ng.layers:
        start = names.index(nl.bn_name if nl.bn is not None else nl.name) + 1
        vals = []
        for b in range(x.shape[0]):
            h = x[b:b + 1]
            with torch.no_grad():
                for m in mods[:start]:
                    h = m(h)
            p_shape = h.shape
            J = torch.eye(h.numel(), dtype=x.dtype)
            for m in mods[start:]:
                jm = torch.autograd.functional.jacobian(lambda t, m=m: m(t), h).reshape(-1, h.numel())
                J = jm.abs() @ J
                with torch.no_grad():
                    h = m(h)
            row = J.sum(0).reshape(p_shape[1], -1).sum(1) / J.shape[0]  # (1/C) Σ_k, summed over positions
            vals.append(row)
        out[nl.name] = torch.stack(vals).mean(0)
    return out


@pytest.mark.parametrize("name", TINY)
def test_exact_and_lb_match_brute_force(name):
    model = _model(name)
    x = torch.randn(5, *input_shape_of(name), dtype=torch.float64)
    jac = _brute_jacobians(model, x)
    exact = neuron_sensitivity(model, x, "exact", class_chunk=2)
    lb = neuron_sensitivity(model, x, "lb")
    for layer, J in jac.items():
        C = J.shape[1]
        truth_exact = J.abs().sum(1).mean(0) / C
        truth_lb = J.sum(1).abs().mean(0) / C
        torch.testing.assert_close(exact[layer], truth_exact, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(lb[layer], truth_lb, rtol=1e-5, atol=1e-10)
        assert truth_exact.abs().sum() > 0, f"{layer}: degenerate test (all-zero sensitivity)"


@pytest.mark.parametrize("name", ["tiny-mlp", "tiny-cnn"])
def test_upper_bound_matches_absolute_jacobian_product(name):
    model = _model(name)
    x = torch.randn(3, *input_shape_of(name), dtype=torch.float64)
    ub = neuron_sensitivity(model, x, "ub")
    truth = _abs_product_ub(model, x)
    for layer, t in truth.items():
        torch.testing.assert_close(ub[layer], t, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("seed", [0, 1])
def test_lb_le_exact_le_ub_neuron_by_neuron(name, seed):
    model = _model(name, seed)
    x = torch.randn(6, *input_shape_of(name), dtype=torch.float64)
    s = {m: neuron_sensitivity(model, x, m) for m in ("lb", "exact", "ub")}
    for layer in s["exact"]:
        lb, ex, ub = s["lb"][layer], s["exact"][layer], s["ub"][layer]
        assert torch.all(lb <= ex * (1 + 1e-9) + 1e-15), layer
        assert torch.all(ex <= ub * (1 + 1e-9) + 1e-15), layer
    # Per sample too (the aggregation keeps the ordering before the batch mean).
    pe = neuron_sensitivity(model, x, "exact", reduce=False)
    pu = neuron_sensitivity(model, x, "ub", reduce=False)
    for layer in pe:
        assert torch.all(pe[layer] <= pu[layer] * (1 + 1e-9) + 1e-15)


@pytest.mark.parametrize("name", TINY)
def test_local_is_fraction_of_active_positions(name):
    model = _model(name)
    x = torch.randn(4, *input_shape_of(name), dtype=torch.float64)
    ng = find_neurons(model)
    local = neuron_sensitivity(model, x, "local")
    psps = _psps(model, x)
    for nl in ng.layers:
        if nl.activation is None:
            torch.testing.assert_close(local[nl.name], torch.ones(nl.num_neurons, dtype=torch.float64))
        elif not nl.activation_after_add:
            p = psps[nl.name]
            dims = [0] + list(range(2, p.dim()))
            torch.testing.assert_close(local[nl.name], (p > 0).double().mean(dims))
        else:
            assert torch.all((local[nl.name] >= 0) & (local[nl.name] <= 1))


def test_output_layer_sensitivity_is_one_over_c():
    """∂y_k/∂p_j = δ_kj for the logits layer: S = 1/C exactly (eq. 4 with pre-softmax outputs)."""
    model = _model("tiny-mlp")
    x = torch.randn(4, 16, dtype=torch.float64)
    ng = find_neurons(model)
    out_layer = [nl for nl in ng.layers if nl.is_output]
    assert [nl.name for nl in out_layer] == ["5"]
    s = neuron_sensitivity(model, x, "exact")["5"]
    torch.testing.assert_close(s, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_exact_chunking_does_not_change_the_result():
    model = _model("tiny-cnn")
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    a = neuron_sensitivity(model, x, "exact", class_chunk=1)
    b = neuron_sensitivity(model, x, "exact", class_chunk=100)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_train_mode_keeps_batchnorm_statistics():
    model = _model("tiny-cnn").train()
    before = model[1].running_mean.clone()
    neuron_sensitivity(model, torch.randn(4, 1, 8, 8, dtype=torch.float64), "exact")
    neuron_sensitivity(model, torch.randn(4, 1, 8, 8, dtype=torch.float64), "ub")
    torch.testing.assert_close(model[1].running_mean, before)


def test_neuron_discovery_on_zoo_models():
    ng = find_neurons(create_model("lenet5"))
    assert [(nl.name, nl.activation_name, nl.is_output) for nl in ng.layers] == [
        ("0", "1", False), ("3", "4", False), ("7", "8", False), ("9", None, True)]
    ng = find_neurons(create_model("resnet32-cifar"))
    residual = [nl for nl in ng.layers if nl.activation_after_add]
    assert residual and all(nl.bn is not None for nl in ng.layers if nl.name != "fc")
    assert [nl.name for nl in ng.layers if nl.is_output] == ["fc"]


def test_unsupported_graphs_are_refused_clearly():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not traceable
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(ModelError, match="torch.fx"):
        find_neurons(Branchy())

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 5)
            self.fc2 = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc2(torch.cumsum(self.fc1(x), 1))

    m = Odd().double()
    x = torch.randn(2, 4, dtype=torch.float64)
    assert neuron_sensitivity(m, x, "exact")["fc1"].shape == (5,)  # exact/LB work on any differentiable graph
    with pytest.raises(ModelError, match="upper bound"):
        neuron_sensitivity(m, x, "ub")


def test_exact_loop_strategy_matches_vectorized():
    from edgeprune.regularize.sensitivity import PspCapture, per_sample_from_deltas

    model = _model("tiny-resnet")
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    ng = find_neurons(model)
    results = []
    for vectorized in (True, False):
        with PspCapture(ng) as cap:
            out = model(x)
            results.append(per_sample_from_deltas(out, [cap.deltas[nl.name] for nl in ng.layers], "exact", 2,
                                                  vectorized=vectorized))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
