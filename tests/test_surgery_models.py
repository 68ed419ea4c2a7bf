"""Surgery on every zoo model and on torchvision classifiers, with random dead sets (zero and constant channels).

The expected parameter count is computed here from the dead set and the layer shapes alone: a removed channel takes
its producers' weight rows and biases, its BN γ/β and its consumers' weight columns; a constant channel is removed
only when every consumer is a Linear or an unpadded, ungrouped conv (exact fold), otherwise kept. Grouped convs
(ResNeXt, RegNet) lose whole dead groups and keep partly dead ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprune.models import create_model, input_shape_of
from edgeprune.surgery import surgery
from edgeprune.surgery.synthetic import kill_conv_groups, kill_random_channels, randomize_bn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


pytestmark = pytest.mark.usefixtures("one_thread")


def foldable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    pad = layer.padding
    unpadded = pad == "valid" if isinstance(pad, str) else all(p == 0 for p in pad)
    return not layer.transposed and layer.groups == 1 and unpadded


def expected_params(model: nn.Module, dead) -> tuple[int, dict[str, int]]:
    """Parameter count after surgery, and channels removed per producer layer, from the dead set and shapes: every
    layer keeps (outputs - removed outputs) x (inputs - removed inputs) x taps weights."""
    mods = dict(model.named_modules())
    out_gone: dict[str, set] = {}
    in_gone: dict[str, set] = {}
    new_bias: set[str] = set()
    for d in dead:
        consumers = [mods[n] for n, role, _ in d.members if role == "consumer"]
        if d.constant and not all(foldable(c) for c in consumers):
            continue
        for name, role, idxs in d.members:
            if role in ("producer", "bn"):
                out_gone.setdefault(name, set()).update(idxs)
            elif role == "consumer":
                in_gone.setdefault(name, set()).update(idxs)
                if d.constant and mods[name].bias is None:
                    new_bias.add(name)
    total = 0
    for name, m in model.named_modules():
        ro, ri = len(out_gone.get(name, ())), len(in_gone.get(name, ()))
        if isinstance(m, (nn.Linear,) + CONVS):
            w = m.weight
            rows, cols = (w.shape[1], w.shape[0]) if isinstance(m, CONVS) and m.transposed else (w.shape[0], w.shape[1])
            taps = w.numel() // (rows * cols)
            depthwise = isinstance(m, CONVS) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            total += (rows - ro) * (cols if depthwise else cols - ri) * taps
            if m.bias is not None or name in new_bias:
                total += rows - ro
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += 2 * (m.num_features - ro) if m.affine else 0
        else:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    rows_removed = {n: len(v) for n, v in out_gone.items() if isinstance(mods[n], (nn.Linear,) + CONVS)}
    return total, rows_removed


def check_model(name: str, shape, seed: int, fraction: float, constant_fraction: float) -> None:
    model = create_model(name).eval()
    randomize_bn(model, seed)
    dead = kill_random_channels(model, shape, fraction, constant_fraction, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want, rows = expected_params(model, dead)
    res = surgery(model, shape)
    slim = res.model
    got = sum(p.numel() for p in slim.parameters())
    assert got == want
    if rows:
        assert got < sum(p.numel() for p in model.parameters())
    assert res.report["params_after"] == got
    for layer, n in rows.items():
        assert len(res.removed[layer]) == n, layer
        assert res.removed[layer] == sorted(set(res.removed[layer]))
    # The input model is untouched.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Independent check of exactness on fresh inputs.
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed + 99))
    with torch.no_grad():
        a, b = model(x), slim(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert not slim.training


ZOO_SMALL = ["tiny-mlp", "tiny-cnn", "tiny-resnet", "lenet300", "lenet5"]
ZOO_LARGE = ["vgg16-cifar", "vgg16-cifar-fc2", "resnet32-cifar", "alexnet-cifar", "unet-small"]
TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "efficientnet_b0", "resnet50"]

dead_sets = dict(
    seed=st.integers(0, 10_000),
    fraction=st.floats(0.05, 0.95),
    constant_fraction=st.sampled_from([0.0, 0.3, 1.0]),
)


@pytest.mark.parametrize("name", ZOO_SMALL)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**dead_sets)
def test_zoo_small(name, seed, fraction, constant_fraction):
    check_model(name, input_shape_of(name), seed, fraction, constant_fraction)


@pytest.mark.parametrize("name", ZOO_LARGE)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**dead_sets)
def test_zoo_large(name, seed, fraction, constant_fraction):
    check_model(name, input_shape_of(name), seed, fraction, constant_fraction)


@pytest.mark.parametrize("name", TORCHVISION)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**dead_sets)
def test_torchvision(name, seed, fraction, constant_fraction):
    check_model(f"torchvision:{name}", (3, 64, 64), seed, fraction, constant_fraction)


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**dead_sets)
def test_torchvision_densenet121(seed, fraction, constant_fraction):
    # 120 layers joined by concatenations: the slowest graph to trace, one example.
    check_model("torchvision:densenet121", (3, 64, 64), seed, fraction, constant_fraction)


def test_torchvision_vgg16_bn():
    # 138 M parameters: one fixed dead set (half the channels, a third of them constant) is enough.
    check_model("torchvision:vgg16_bn", (3, 32, 32), seed=3, fraction=0.5, constant_fraction=0.3)


@pytest.mark.parametrize("name", ["regnet_x_400mf", "resnext50_32x4d"])
def test_torchvision_grouped_convs_lose_whole_dead_groups(name):
    """Whole groups killed in every grouped conv (inputs, outputs, BN; a third of them constant), one input channel
    killed in some other groups, and half of every other coupled group killed: dead groups leave, partly dead ones
    stay with a reason naming the conv, and the slim model computes the same."""
    shape = (3, 64, 64)
    model = create_model(f"torchvision:{name}").eval()
    randomize_bn(model, 0)
    killed = kill_conv_groups(model, shape, fraction=0.4, partial_fraction=0.2, constant_fraction=0.3, seed=1)
    kill_random_channels(model, shape, 0.5, 0.3, seed=2)
    assert len(killed) >= 10
    res = surgery(model, shape)
    by_layer = {c["layer"]: c for c in res.report["grouped_convs"]}
    assert set(by_layer) == set(killed)
    for conv, k in killed.items():
        c = by_layer[conv]
        assert c["groups_cut"] == k["dead"], conv
        layer = res.model.get_submodule(conv)
        assert layer.groups == c["groups_after"] == c["groups_before"] - len(k["dead"])
        # Each partly dead group keeps its one dead input, with a reason naming the conv.
        assert not set(k["partial"]) & set(c["groups_cut"])
        assert sum(conv in kept["reason"] for kept in res.report["kept"]) == len(k["partial"]), conv
    assert res.report["params_after"] < 0.6 * res.report["params_before"]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = model(x), res.model(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
