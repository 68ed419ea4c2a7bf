"""SeReNe sensitivities (eqs. 4, 10, 13, 19) against brute-force Jacobians on tiny networks, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeprune.errors import ModelError
from edgeprune.models import create_model, input_shape_of
from edgeprune.regularize import METHODS, find_neurons, neuron_sensitivity

TINY = ["tiny-mlp", "tiny-cnn", "tiny-resnet"]

pytestmark = pytest.mark.usefixtures("one_thread")



def _random_bn_(m: nn.Module, var=(0.5, 2.0), gamma: float = 1.5, beta: float = 0.5) -> None:
    """Non-trivial BatchNorm statistics and affine parameters so BN's Jacobian is not the identity."""
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(*var)
                mod.weight.uniform_(-gamma, gamma)
                mod.bias.uniform_(-beta, beta)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = create_model(name).double()
    _random_bn_(m)
    return m.eval()


def _brute_jacobians(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """d logits / d p for every position of every PSP, by adding a PSP-shaped δ with our own hooks and
    differentiating with torch.autograd.functional.jacobian (independent of the library's capture code). Returns
    per layer the per-sample Jacobian B × C × neurons × positions (samples are independent in eval mode; a Linear
    layer has one position)."""
    ng = find_neurons(model)
    shapes = {k: v.shape for k, v in _psps(model, x).items()}
    out = {}
    for nl in ng.layers:
        mod = nl.psp_module

        def f(delta, mod=mod):
            h = mod.register_forward_hook(lambda module, inputs, o: o + delta)
            try:
                return model(x)
            finally:
                h.remove()

        shape = shapes[nl.name]
        jac = torch.autograd.functional.jacobian(f, torch.zeros(shape, dtype=x.dtype))  # B × C × B × N × ...
        idx = torch.arange(x.shape[0])
        J = jac[idx, :, idx]  # B × C × N × ...
        out[nl.name] = J.reshape(*J.shape[:3], -1)
    return out


def _aggregate(per_position: torch.Tensor, how: str, inside_abs) -> torch.Tensor:
    """The two spatial rules on B × C × N × P brute-force values: "mean" applies ``inside_abs`` (the paper's
    per-PSP |·|) to every position and averages; "sum" sums the derivatives over positions first."""
    if how == "mean":
        return inside_abs(per_position).mean(-1)
    return inside_abs(per_position.sum(-1))


def _psps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    ng = find_neurons(model)
    store, handles = {}, []
    for nl in ng.layers:
        handles.append(nl.psp_module.register_forward_hook(lambda m, i, o, n=nl.name: store.__setitem__(n, o.detach().clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return store


def _abs_product_ub(model: nn.Sequential, x: torch.Tensor, how: str = "mean") -> dict[str, torch.Tensor]:
    """Eq. 13 by brute force for Sequential models: per sample, the product of the absolute Jacobian of every
    module after the PSP (each computed with torch.autograd.functional.jacobian), summed over classes, then averaged
    ("mean") or summed ("sum") over the channel's positions."""
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
            per_position = J.sum(0).reshape(p_shape[1], -1) / J.shape[0]  # (1/C) Σ_k, per position
            vals.append(per_position.mean(1) if how == "mean" else per_position.sum(1))
        out[nl.name] = torch.stack(vals).mean(0)
    return out


def _check_exact_lb(model, x, how, lib_model=None):
    """The library's exact and LB on ``lib_model`` (default ``model``) against brute force on ``model``."""
    jac = _brute_jacobians(model, x)
    lib_model = lib_model if lib_model is not None else model
    exact = neuron_sensitivity(lib_model, x, "exact", class_chunk=2, conv_sensitivity=how)
    lb = neuron_sensitivity(lib_model, x, "lb", conv_sensitivity=how)
    for layer, J in jac.items():
        C = J.shape[1]
        truth_exact = _aggregate(J, how, lambda t: t.abs().sum(1)).mean(0) / C
        truth_lb = _aggregate(J, how, lambda t: t.sum(1).abs()).mean(0) / C
        torch.testing.assert_close(exact[layer], truth_exact, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(lb[layer], truth_lb, rtol=1e-5, atol=1e-10)
        assert truth_exact.abs().sum() > 0, f"{layer}: degenerate test (all-zero sensitivity)"


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("name", TINY)
def test_exact_and_lb_match_brute_force(name, how):
    model = _model(name)
    x = torch.randn(5, *input_shape_of(name), dtype=torch.float64)
    _check_exact_lb(model, x, how)


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("name", ["tiny-mlp", "tiny-cnn"])
def test_upper_bound_matches_absolute_jacobian_product(name, how):
    model = _model(name)
    x = torch.randn(3, *input_shape_of(name), dtype=torch.float64)
    ub = neuron_sensitivity(model, x, "ub", conv_sensitivity=how)
    truth = _abs_product_ub(model, x, how)
    for layer, t in truth.items():
        torch.testing.assert_close(ub[layer], t, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("seed", [0, 1])
def test_lb_le_exact_le_ub_neuron_by_neuron(name, seed, how):
    model = _model(name, seed)
    x = torch.randn(6, *input_shape_of(name), dtype=torch.float64)
    s = {m: neuron_sensitivity(model, x, m, conv_sensitivity=how) for m in ("lb", "exact", "ub")}
    for layer in s["exact"]:
        lb, ex, ub = s["lb"][layer], s["exact"][layer], s["ub"][layer]
        assert torch.all(lb <= ex * (1 + 1e-9) + 1e-15), layer
        assert torch.all(ex <= ub * (1 + 1e-9) + 1e-15), layer
    # Per sample too (the aggregation keeps the ordering before the batch mean).
    pe = neuron_sensitivity(model, x, "exact", reduce=False, conv_sensitivity=how)
    pu = neuron_sensitivity(model, x, "ub", reduce=False, conv_sensitivity=how)
    for layer in pe:
        assert torch.all(pe[layer] <= pu[layer] * (1 + 1e-9) + 1e-15)


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-resnet"])
def test_mean_and_sum_differ_by_the_number_of_positions(name):
    """UB: exactly a factor of H·W (non-negative terms); exact and LB: mean·H·W ≥ sum (|·| inside vs outside the
    sum over positions), strictly for some filter; Linear layers and the local sensitivity: identical."""
    model = _model(name)
    x = torch.randn(4, *input_shape_of(name), dtype=torch.float64)
    positions = {k: v[0, 0].numel() for k, v in _psps(model, x).items()}
    s = {(m, how): neuron_sensitivity(model, x, m, conv_sensitivity=how)
         for m in METHODS for how in ("mean", "sum")}
    assert any(p > 1 for p in positions.values()) and any(p == 1 for p in positions.values())
    strictly = False
    for layer, P in positions.items():
        torch.testing.assert_close(s["ub", "mean"][layer] * P, s["ub", "sum"][layer])
        torch.testing.assert_close(s["local", "mean"][layer], s["local", "sum"][layer])
        for m in ("exact", "lb"):
            mean, total = s[m, "mean"][layer], s[m, "sum"][layer]
            if P == 1:
                torch.testing.assert_close(mean, total)
            else:
                assert torch.all(mean * P >= total * (1 - 1e-9)), (m, layer)
                strictly |= bool(torch.any(mean * P > total * (1 + 1e-6)))
    assert strictly, "exact/LB: the per-position |·| never mattered (degenerate test)"


def test_unknown_conv_sensitivity_is_refused():
    model = _model("tiny-cnn")
    with pytest.raises(ValueError, match="conv_sensitivity"):
        neuron_sensitivity(model, torch.randn(2, 1, 8, 8, dtype=torch.float64), "lb", conv_sensitivity="max")


# ---------------------------------------------------------------------------------------------------------------
# In-place activations (torchvision's EfficientNet / MobileNetV3 / ResNet use inplace=True).
# ---------------------------------------------------------------------------------------------------------------

def _inplace_net(inplace: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(inplace=inplace),
        nn.Conv2d(4, 5, 3), nn.Hardswish(inplace=inplace), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(5 * 3 * 3, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 3),
    )


class _InplaceResidual(nn.Module):
    """A torchvision-style block: ``out += identity`` then an in-place activation after the addition."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=inplace))
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.act1 = nn.Hardswish(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.act2 = nn.SiLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        identity = self.stem(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(identity)))))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        return self.fc(self.flatten(self.pool(self.act2(out))))


def _inplace_pair(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(in-place model, the same weights without any in-place operation), float64, eval mode."""
    torch.manual_seed(seed)
    a = (_inplace_net(True) if kind == "sequential" else _InplaceResidual(True)).double()
    _random_bn_(a, var=(0.2, 1.0), gamma=2.5, beta=1.0)
    b = (_inplace_net(False) if kind == "sequential" else _InplaceResidual(False)).double()
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


def _activation_derivative_truth(act: nn.Module, p: torch.Tensor) -> torch.Tensor:
    """|g'(p)| from the closed forms (independent of autograd and of the library)."""
    if isinstance(act, nn.SiLU):
        sig = torch.sigmoid(p)
        return (sig * (1 + p * (1 - sig))).abs()
    if isinstance(act, nn.Hardswish):
        return torch.where(p < -3, torch.zeros_like(p), torch.where(p > 3, torch.ones_like(p), p / 3 + 0.5)).abs()
    if isinstance(act, nn.ReLU):
        return (p > 0).to(p.dtype)
    raise AssertionError(type(act))


def _activation_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Per neuron layer of a model without in-place operations: (activation, the tensor it receives)."""
    ng = find_neurons(model)
    store, handles = {}, []
    for nl in ng.layers:
        if nl.activation is not None:
            handles.append(nl.activation.register_forward_pre_hook(
                lambda m, i, n=nl.name: store.__setitem__(n, (m, i[0].detach().clone()))))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return store


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["sequential", "residual"])
def test_inplace_activations_exact_and_lb_match_brute_force(kind, how):
    inplace, plain = _inplace_pair(kind)
    x = 1.5 * torch.randn(5, 1, 8, 8, dtype=torch.float64)
    _check_exact_lb(plain, x, how, lib_model=inplace)


@pytest.mark.parametrize("kind", ["sequential", "residual"])
def test_inplace_activations_local_matches_closed_form(kind):
    inplace, plain = _inplace_pair(kind)
    x = 1.5 * torch.randn(5, 1, 8, 8, dtype=torch.float64)
    local = neuron_sensitivity(inplace, x, "local")
    inputs = _activation_inputs(plain, x)
    kinds_seen = set()
    for nl in find_neurons(plain).layers:
        if nl.activation is None:
            torch.testing.assert_close(local[nl.name], torch.ones(nl.num_neurons, dtype=torch.float64))
            continue
        act, p = inputs[nl.name]
        d = _activation_derivative_truth(act, p)
        torch.testing.assert_close(local[nl.name], d.mean([0] + list(range(2, d.dim()))), rtol=1e-9, atol=1e-12)
        kinds_seen.add((type(act).__name__, nl.activation_after_add))
        # Not vacuous: the derivative at the activation's output (what an overwritten PSP gives) differs.
        if not isinstance(act, nn.ReLU):
            wrong = _activation_derivative_truth(act, act(p.clone()))
            assert not torch.allclose(wrong.mean([0] + list(range(2, d.dim()))), local[nl.name])
    expected = {("SiLU", False), ("Hardswish", False), ("ReLU", False)} if kind == "sequential" else \
        {("ReLU", False), ("Hardswish", False), ("SiLU", True)}
    assert kinds_seen == expected


@pytest.mark.parametrize("how", ["mean", "sum"])
def test_inplace_activations_upper_bound_matches_brute_force(how):
    inplace, plain = _inplace_pair("sequential")
    x = 1.5 * torch.randn(3, 1, 8, 8, dtype=torch.float64)
    ub = neuron_sensitivity(inplace, x, "ub", conv_sensitivity=how)
    truth = _abs_product_ub(plain, x, how)
    for layer, t in truth.items():
        torch.testing.assert_close(ub[layer], t, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["sequential", "residual"])
def test_inplace_model_gives_the_non_inplace_models_sensitivities(kind, how):
    inplace, plain = _inplace_pair(kind)
    x = 1.5 * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(inplace(x), plain(x))
    for m in METHODS:
        a = neuron_sensitivity(inplace, x, m, conv_sensitivity=how)
        b = neuron_sensitivity(plain, x, m, conv_sensitivity=how)
        for layer in b:
            torch.testing.assert_close(a[layer], b[layer], rtol=1e-9, atol=1e-12, msg=f"{m} {layer}")
    ex = neuron_sensitivity(inplace, x, "exact", conv_sensitivity=how)
    ub = neuron_sensitivity(inplace, x, "ub", conv_sensitivity=how)
    for layer in ex:
        assert torch.all(ex[layer] <= ub[layer] * (1 + 1e-9) + 1e-15), layer


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
