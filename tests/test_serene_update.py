"""SeReNe eq. 15 / 23, LOBSTER eq. 4 and pinning through SGD with momentum."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeprune.models import create_model
from edgeprune.regularize import find_neurons
from edgeprune.regularize.update import Regularizer, insensitivity, lobster_update_, serene_update_
from edgeprune.threshold import full_masks, threshold_masks, pin_

pytestmark = pytest.mark.usefixtures("one_thread")



def test_insensitivity_is_eq14():
    s = torch.tensor([0.0, 0.25, 1.0, 3.0])
    torch.testing.assert_close(insensitivity(s), torch.tensor([1.0, 0.75, 0.0, 0.0]))


def test_serene_update_shrinks_insensitive_neurons_and_spares_sensitive_ones():
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    ng = find_neurons(model)
    conv = ng.layers[0]  # conv + BN: weight, bias, γ, β all belong to the neurons
    before = {n: p.detach().clone() for n, p in conv.parameters()}
    s = torch.tensor([0.0, 0.5, 1.0, 2.0])
    serene_update_([conv], {conv.name: s}, lam=0.1)
    expected_factor = torch.tensor([1 - 0.1, 1 - 0.05, 1.0, 1.0])
    assert {n for n, _ in conv.parameters()} == {"0.weight", "0.bias", "1.weight", "1.bias"}
    for n, p in conv.parameters():
        f = expected_factor.view(-1, *([1] * (p.dim() - 1)))
        torch.testing.assert_close(p.detach(), before[n] * f)
    # Sensitive neurons (S >= 1) untouched bit for bit.
    for n, p in conv.parameters():
        assert torch.equal(p.detach()[2:], before[n][2:])


def test_lobster_update_is_per_parameter():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    m = nn.Module()
    m.p = p
    lobster_update_(m, {"p": torch.tensor([1.0, 0.0, 0.5])}, lam=0.1)
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -2.0, 2.85]))


@pytest.mark.parametrize("method", ["serene-lb", "serene-exact", "serene-ub", "serene-local", "lobster", "l2"])
def test_pinned_parameters_stay_zero_through_sgd_momentum(method):
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    masks = threshold_masks(model, full_masks(model), 0.1)
    # Kill one whole neuron too (its BN channel included).
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        masks[name][1] = False
    pin_(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3 if method == "l2" else 0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    with Regularizer(model, method, 0.0 if method == "l2" else 0.01, masks) as reg:
        for _ in range(4):
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward(retain_graph=reg.needs_graph)
            reg.after_backward(x, out)
            opt.step()
            reg.after_step(opt)
    for n, p in model.named_parameters():
        assert torch.all(p.detach()[~masks[n]] == 0), n
        buf = opt.state[p].get("momentum_buffer")
        assert buf is None or torch.all(buf[~masks[n]] == 0), n
    # Something alive did move (the test is not vacuous).
    assert any(bool(masks[n].any()) for n in masks)


def test_regularizer_reduces_loss_free_parameters_only_by_penalty():
    """With a zero loss gradient (lr=0) SeReNe moves parameters exactly by −λ·θ·S̄ with S from the LB."""
    torch.manual_seed(0)
    model = create_model("tiny-mlp")
    masks = full_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    from edgeprune.regularize import neuron_sensitivity

    model.train()
    s = neuron_sensitivity(model, x, "lb")
    with Regularizer(model, "serene-lb", 0.5, masks) as reg:
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward(retain_graph=True)
        reg.after_backward(x, out)
        opt.step()
        reg.after_step(opt)
    for layer in ("1", "3", "5"):
        f = 1 - 0.5 * insensitivity(s[layer])
        torch.testing.assert_close(dict(model.named_parameters())[f"{layer}.weight"].detach(),
                                   before[f"{layer}.weight"] * f[:, None])


@pytest.mark.parametrize("how", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["exact", "lb", "ub", "local"])
def test_regularizer_uses_the_configured_conv_sensitivity(kind, how):
    """The S the update applies is neuron_sensitivity's with the same spatial rule (conv layers of tiny-cnn)."""
    from edgeprune.regularize import neuron_sensitivity

    torch.manual_seed(0)
    model = create_model("tiny-cnn").double().eval()  # eval: the batch's BN statistics do not move between calls
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    expected = neuron_sensitivity(model, x, kind, conv_sensitivity=how)
    with Regularizer(model, f"serene-{kind}", 0.1, full_masks(model), conv_sensitivity=how) as reg:
        out = model(x)
        F.cross_entropy(out, y).backward(retain_graph=reg.needs_graph)
        reg.after_backward(x, out)
        got = dict(reg._pending)
    assert set(got) == set(expected)
    for layer in expected:
        torch.testing.assert_close(got[layer], expected[layer])


def test_conv_sensitivity_config_field():
    from edgeprune.errors import ConfigError
    from edgeprune.regularize.config import CompressConfig

    assert CompressConfig().conv_sensitivity == "mean"
    assert CompressConfig(conv_sensitivity="sum").conv_sensitivity == "sum"
    with pytest.raises(ValueError, match="--conv-sensitivity"):
        CompressConfig(conv_sensitivity="max")
    with pytest.raises(ConfigError):
        Regularizer(create_model("tiny-cnn"), "serene-ub", 0.1, {}, conv_sensitivity="max")
    # A config file written before the field existed loads with the default.
    data = CompressConfig().to_dict()
    del data["conv_sensitivity"]
    assert CompressConfig.from_dict(data).conv_sensitivity == "mean"



def test_state_recorded_before_the_field_resumes_with_the_sum(tmp_path):
    """A run recorded without conv_sensitivity summed over positions: it resumes that way, not with the new mean."""
    from edgeprune.errors import ConfigError
    from edgeprune.regularize.config import CompressConfig
    from edgeprune.regularize.loop import STATE_FORMAT, LoopState, Snapshot, _load_state

    recorded = CompressConfig().to_dict()
    del recorded["conv_sensitivity"]
    config = CompressConfig.from_dict(recorded, recorded=True)  # what --resume rebuilds from the run's manifest
    assert config.conv_sensitivity == "sum"
    model = create_model("tiny-mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = config.comparable()
    del saved["conv_sensitivity"]
    path = tmp_path / "state.pt"
    loop = LoopState(masks=full_masks(model), baseline_val={"loss": 1.0, "accuracy": 0.5}, target=0.4,
                     best=Snapshot(model.state_dict(), {"loss": 1.0, "accuracy": 0.5}), initial=model.state_dict(),
                     epoch=3)
    torch.save({"format": STATE_FORMAT, "config": saved, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state(), **loop.to_payload()}, path)
    assert _load_state(path, "cpu", config)[0].epoch == 3
    with pytest.raises(ConfigError, match="conv_sensitivity"):
        _load_state(path, "cpu", CompressConfig.from_dict({**recorded, "conv_sensitivity": "mean"}, recorded=True))
