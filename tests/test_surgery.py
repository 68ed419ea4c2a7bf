"""Surgery invariants on small models: closed-form sizes for chains, constant folding, refusals, rounding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprune.errors import ConfigError, SurgeryError
from edgeprune.models import create_model, input_shape_of
from edgeprune.surgery import surgery
from edgeprune.surgery.synthetic import randomize_bn
from edgeprune.surgery.verify import verify

BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- chains: every producer feeds the next one; sizes follow in closed form --------------------------------------


def chain(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """(producer, the BN right after it) in execution order, for Sequential-style models."""
    leaves = [m for m in model.modules() if not list(m.children())]
    out = []
    for i, m in enumerate(leaves):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nxt = leaves[i + 1] if i + 1 < len(leaves) else None
            out.append((m, nxt if isinstance(nxt, BNS) else None))
    return out


def width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def kill_chain(model, seed, fraction, constant_fraction):
    """Per hidden layer, zero a random subset of weight rows; a constant channel keeps a positive bias / BN β."""
    g = torch.Generator().manual_seed(seed)
    layers = chain(model)
    dead = []
    for layer, bn in layers[:-1]:
        c = width(layer)
        idxs = torch.randperm(c, generator=g)[: min(c - 1, round(fraction * c))].tolist()
        const = {i: bool(torch.rand(1, generator=g) < constant_fraction) for i in idxs}
        with torch.no_grad():
            for i in idxs:
                layer.weight[i] = 0
                layer.bias[i] = float(torch.rand(1, generator=g)) + 0.5 if const[i] else 0.0
                if bn is not None:
                    bn.weight[i] = float(torch.rand(1, generator=g)) - 0.5 if const[i] else 0.0
                    bn.bias[i] = float(torch.rand(1, generator=g)) + 2.0 if const[i] else 0.0
        dead.append(const)
    return dead


def expected_chain(model, dead) -> tuple[list[int], int]:
    """Widths and parameter count after surgery: a constant channel leaves only if its consumer is a Linear or an
    unpadded conv (exact fold)."""
    layers = chain(model)
    removed = []
    for (layer, _), (consumer, _), const in zip(layers, layers[1:], dead):
        fold_ok = isinstance(consumer, nn.Linear) or all(p == 0 for p in consumer.padding)
        removed.append(sum(1 for c in const.values() if not c or fold_ok))
    removed.append(0)
    widths, total, prev_in_removed = [], 0, 0
    for k, ((layer, bn), r) in enumerate(zip(layers, removed)):
        rows, cols = layer.weight.shape[0], layer.weight.shape[1]
        taps = layer.weight.numel() // (rows * cols)
        if k:
            # A Linear after Flatten sees each channel as in_features / channels features.
            per_channel = cols // width(layers[k - 1][0])
            prev_in_removed = removed[k - 1] * per_channel
        total += (rows - r) * (cols - prev_in_removed) * taps + (rows - r)
        total += 2 * (rows - r) if bn is not None else 0
        widths.append(rows - r)
    return widths, total


def check_chain(name, seed, fraction, constant_fraction, round_channels=None):
    model = create_model(name).eval()
    randomize_bn(model, seed)
    dead = kill_chain(model, seed, fraction, constant_fraction)
    widths, params = expected_chain(model, dead)
    res = surgery(model, input_shape_of(name), round_channels=round_channels)
    got = [width(m) for m, _ in chain(res.model)]
    return res, widths, params, got


@pytest.mark.parametrize("name", ["tiny-mlp", "tiny-cnn", "lenet300", "lenet5"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.0, 1.0), constant_fraction=st.floats(0.0, 1.0))
def test_chain_sizes_in_closed_form(name, seed, fraction, constant_fraction):
    res, widths, params, got = check_chain(name, seed, fraction, constant_fraction)
    assert got == widths
    assert sum(p.numel() for p in res.model.parameters()) == params
    assert res.report["verification"]["relative_diff"] <= 1e-5


def test_vgg_padded_convs_keep_constant_channels():
    res, widths, params, got = check_chain("vgg16-cifar-fc2", seed=5, fraction=0.5, constant_fraction=0.5)
    assert got == widths
    assert sum(p.numel() for p in res.model.parameters()) == params
    reasons = [k["reason"] for k in res.report["kept"]]
    assert reasons and all("padding" in r for r in reasons)


@pytest.mark.parametrize("n", [4, 8])
def test_round_channels_keeps_fewest_extra(n):
    name = "lenet300"
    res, widths, _, got = check_chain(name, seed=7, fraction=0.55, constant_fraction=0.0, round_channels=n)
    full = [width(m) for m, _ in chain(create_model(name))]
    for w_exact, w_full, w in zip(widths[:-1], full, got):
        assert w == min(w_full, math.ceil(w_exact / n) * n)
        assert w % n == 0 or w == w_full
    assert res.report["verification"]["relative_diff"] <= 1e-5


# --- constant folding --------------------------------------------------------------------------------------------


class PoolFlatten(nn.Module):
    """conv → ReLU → 3x3 average pool counting padding → Flatten → Linear without bias: a constant channel becomes
    features with different constants (smaller at the borders), all folded into a bias the Linear must grow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.fc = nn.Linear(4 * 6 * 6, 3, bias=False)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))))


def test_fold_through_flatten_with_position_dependent_constants():
    m = PoolFlatten().eval()
    with torch.no_grad():
        m.conv.weight[1] = 0
        m.conv.bias[1] = 0.8
    res = surgery(m, (1, 6, 6))
    slim = res.model
    assert slim.conv.out_channels == 3 and slim.fc.in_features == 3 * 36
    assert slim.fc.bias is not None and res.report["bias_added"] == ["fc"]
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(m(x), slim(x), atol=1e-6)
    assert res.removed["conv"] == [1]


class PaddedPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).flatten(1))


def test_bn_beta_constant_into_padded_conv_is_kept_where_naive_pruning_breaks():
    import torch_pruning as tp

    m = PaddedPair().eval()
    randomize_bn(m)
    with torch.no_grad():
        m.c1.weight[2] = 0
        m.bn.weight[2] = 0.0
        m.bn.bias[2] = 1.5  # the "dead" filter still emits relu(1.5) everywhere
        m.c1.weight[0] = 0
        m.bn.weight[0] = 0.0
        m.bn.bias[0] = 0.0  # truly dead
    res = surgery(m, (1, 5, 5))
    assert res.removed["c1"] == [0]
    assert [k["channel"] for k in res.report["kept"] if k["layer"] == "c1"] == [2]
    assert "padding" in res.report["kept"][0]["reason"]
    # torch-pruning alone removes channel 2 too and silently changes the function.
    naive = PaddedPair().eval()
    naive.load_state_dict(m.state_dict())
    x = torch.randn(4, 1, 5, 5)
    with torch.no_grad():
        ref = m(x)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(naive, example_inputs=x[:1])
    dg.get_pruning_group(naive.c1, tp.prune_conv_out_channels, idxs=[0, 2]).prune()
    with torch.no_grad():
        assert (naive(x) - ref).abs().max() > 1e-3
        assert (res.model(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


# --- residual streams ----------------------------------------------------------------------------------------------


def test_residual_channel_dead_in_one_branch_is_kept():
    m = create_model("tiny-resnet").eval()
    randomize_bn(m)
    with torch.no_grad():
        # block1 adds its branch onto the stem's stream: channel 1 dead in the branch only.
        m.block1.conv2.weight[1] = 0
        m.block1.bn2.weight[1] = 0
        m.block1.bn2.bias[1] = 0
        # an internal channel of block2 (conv1 → bn1 → relu → conv2) is dead for real.
        m.block2.conv1.weight[3] = 0
        m.block2.bn1.weight[3] = 0
        m.block2.bn1.bias[3] = 0
    res = surgery(m, (1, 8, 8))
    assert "block1.conv2" not in res.removed and "stem.0" not in res.removed
    assert res.removed["block2.conv1"] == [3]
    assert res.model.block1.conv2.out_channels == 4 and res.model.block2.conv1.out_channels == 5
    # Dead in every producer of the stream (stem and block1's branch): the stream channel goes.
    with torch.no_grad():
        m.stem[0].weight[1] = 0
        m.stem[1].weight[1] = 0
        m.stem[1].bias[1] = 0
    res = surgery(m, (1, 8, 8))
    assert res.removed["stem.0"] == [1] and res.removed["block1.conv2"] == [1]
    assert res.model.block1.conv1.in_channels == 3


def test_output_layer_is_never_cut_and_input_is_untouched():
    m = create_model("tiny-mlp")
    m.train()
    m[1].eval()
    with torch.no_grad():
        m[5].weight[0] = 0
        m[5].bias[0] = 0
    state = {k: v.clone() for k, v in m.state_dict().items()}
    res = surgery(m, (1, 4, 4))
    assert res.model[5].out_features == 3 and "5" not in res.removed
    assert m.training and not m[1].training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert not res.model.training


# --- refusals and errors -----------------------------------------------------------------------------------------


class Grouped(nn.Module):
    """c1 → ReLU → c2 (3x3, padded, 6 groups of 2) → BN → ReLU → c3 (1x1) → Flatten → Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 12, 3)
        self.c2 = nn.Conv2d(12, 12, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(12)
        self.c3 = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.c3(torch.relu(self.bn(self.c2(torch.relu(self.c1(x)))))).flatten(1))


def dead_groups_model() -> Grouped:
    m = Grouped().eval()
    randomize_bn(m)
    with torch.no_grad():
        # group 0: both inputs provably zero; c2's kernel lives, so the group emits its bias (folded into c3).
        m.c1.weight[0:2] = 0
        m.c1.bias[0:2] = 0
        # group 1: everything dead, BN included.
        m.c1.weight[2:4] = 0
        m.c1.bias[2:4] = 0
        m.c2.weight[2:4] = 0
        m.c2.bias[2:4] = 0
        m.bn.weight[2:4] = 0
        m.bn.bias[2:4] = 0
        # group 2: one of its two inputs dead, the rest alive: partly dead, must stay.
        m.c1.weight[4] = 0
        m.c1.bias[4] = 0
        # group 3: c2's whole group is zero (its inputs, alive, are read by nobody else); BN β leaves a constant.
        m.c2.weight[6:8] = 0
        m.c2.bias[6:8] = 0
        m.bn.weight[6:8] = 0
        m.bn.bias[6:8] = 1.5
    return m


def test_grouped_conv_loses_whole_dead_groups_only(tmp_path):
    from edgeprune.surgery.replay import replay

    m = dead_groups_model()
    m.edgeprune_arch = {"name": "grouped-test"}
    res = surgery(m, (1, 6, 6))
    slim = res.model
    assert res.report["grouped_convs"] == [{
        "layer": "c2", "groups_before": 6, "groups_after": 3, "groups_cut": [0, 1, 3],
        "groups_kept_partly_dead": {"2": "group 2 of c2 (groups=6) is not entirely dead: 1 of its 2 input channels "
                                         "and 2 of its 2 output channels are not removable"}}]
    assert (slim.c2.groups, slim.c2.in_channels, slim.c2.out_channels) == (3, 6, 6)
    assert slim.c2.weight.shape == (6, 2, 3, 3)
    assert res.removed["c1"] == [0, 1, 2, 3, 6, 7] and res.removed["c2"] == [0, 1, 2, 3, 6, 7]
    assert slim.bn.num_features == 6 and slim.c3.in_channels == 6
    assert [(k["layer"], k["channel"]) for k in res.report["kept"]] == [("c1", 4)]
    assert "group 2 of c2" in res.report["kept"][0]["reason"]
    x = torch.randn(8, 1, 6, 6)
    with torch.no_grad():
        ref = m(x)
        assert (slim(x) - ref).abs().max() <= 1e-5 * ref.abs().max()
    # The recorded surgery rebuilds the same slim model from the dense architecture.
    spec = slim.edgeprune_arch["surgery"]
    assert spec["version"] == 2 and ["c2", "cut_conv_groups", [0, 1, 3]] in spec["steps"]
    rebuilt = replay(Grouped(), spec)
    rebuilt.load_state_dict(slim.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), slim(x))


def test_grouped_conv_with_no_whole_dead_group_keeps_its_channels():
    m = Grouped().eval()
    res = surgery(m, (1, 6, 6))  # nothing dead: nothing to cut
    assert res.report["channels_removed"] == 0
    with torch.no_grad():
        m.c1.weight[3] = 0
        m.c1.bias[3] = 0
    res = surgery(m, (1, 6, 6))
    assert res.report["channels_removed"] == 0 and res.model.c2.groups == 6
    assert res.report["kept"] == [{"layer": "c1", "channel": 3, "reason": "group 1 of c2 (groups=6) is not entirely "
                                                                           "dead: 1 of its 2 input channels and 2 of "
                                                                           "its 2 output channels are not removable"}]


# --- every output is verified, and outputs are consumers -----------------------------------------------------------


class TwoOutputs(nn.Module):
    """Returns (logits, embedding); the embedding is fc1's output, also fed to the classifier."""

    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(8, 10)
        self.fc1 = nn.Linear(10, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        emb = self.fc1(torch.relu(self.fc0(x.flatten(1))))
        return self.fc2(torch.relu(emb)), emb


def test_a_channel_reaching_a_model_output_stays_and_every_output_is_verified():
    m = TwoOutputs().eval()
    with torch.no_grad():
        m.fc1.weight[4] = 0
        m.fc1.bias[4] = 0  # dead for the classifier, but it is embedding feature 4
        m.fc0.weight[7] = 0
        m.fc0.bias[7] = 0  # an internal neuron: it goes
    res = surgery(m, (1, 2, 4))
    assert res.model.fc1.out_features == 6 and "fc1" not in res.removed
    assert res.removed["fc0"] == [7]
    assert any(s["layer"] == "fc1" and "model output" in s["reason"] for s in res.report["skipped_groups"])
    outs = res.report["verification"]["outputs"]
    assert [(o["output"], o["shape"]) for o in outs] == [("output[0]", [2, 3]), ("output[1]", [2, 6])]
    assert all(o["relative_diff"] <= 1e-5 for o in outs)


class DictOutputs(TwoOutputs):
    def forward(self, x):
        logits, emb = super().forward(x)
        return {"logits": logits, "embedding": torch.tanh(emb)}


def test_narrowed_output_is_a_shape_error_and_a_changed_one_a_value_error():
    m = DictOutputs().eval()
    with torch.no_grad():
        m.fc2.weight[:, 5] = 0  # the classifier ignores embedding feature 5
    narrow = DictOutputs().eval()
    narrow.fc1, narrow.fc2 = nn.Linear(10, 5), nn.Linear(5, 3)
    x = [torch.randn(4, 1, 2, 4)]
    with pytest.raises(SurgeryError, match=r"output\['embedding'\] \(4, 5\).*output\['embedding'\] \(4, 6\)"):
        verify(m, narrow, x, {}, 1e-5)
    changed = DictOutputs().eval()
    changed.load_state_dict(m.state_dict())
    with torch.no_grad():
        changed.fc1.bias[5] += 1.0  # only the embedding moves; the logits stay identical
        assert torch.equal(changed(x[0])["logits"], m(x[0])["logits"])
    with pytest.raises(SurgeryError, match=r"output\['embedding'\] differs"):
        verify(m, changed, x, {}, 1e-5)
    # The embedding leaves through tanh (a graph output that is no layer): surgery still keeps its width.
    with torch.no_grad():
        m.fc1.weight[2] = 0
        m.fc1.bias[2] = 0
    res = surgery(m, (1, 2, 4))
    assert res.model.fc1.out_features == 6
    assert any(s["layer"] == "fc1" and "output" in s["reason"] for s in res.report["skipped_groups"])
    assert [o["output"] for o in res.report["verification"]["outputs"]] == ["output['logits']", "output['embedding']"]


def test_verification_names_the_diverging_layer():
    masked = create_model("tiny-cnn").eval()
    wrong = create_model("tiny-cnn").eval()
    wrong.load_state_dict(masked.state_dict())
    with torch.no_grad():
        wrong[4].bias += 0.5
    x = [torch.randn(4, 1, 8, 8)]
    with pytest.raises(SurgeryError, match=r"first diverging layers: 4\b"):
        verify(masked, wrong, x, {}, 1e-5)
    assert verify(masked, masked, x, {}, 1e-5)["max_abs_diff"] == 0.0


def test_bad_options():
    m = create_model("tiny-mlp")
    with pytest.raises(ConfigError, match="round_channels"):
        surgery(m, (1, 4, 4), round_channels=0)
    with pytest.raises(ConfigError, match="probe batch"):
        surgery(m, (1, 4, 4), probe_batch=torch.randn(2, 1, 5, 5))


def test_real_probe_batch_is_used_for_verification():
    m = create_model("tiny-cnn").eval()
    with torch.no_grad():
        m[4].weight[2] = 0
        m[4].bias[2] = 0.3
    res = surgery(m, (1, 8, 8), probe_batch=torch.rand(6, 1, 8, 8))
    assert res.removed["4"] == [2]
    assert res.report["verification"]["relative_diff"] <= 1e-5


def test_depthwise_conv_fed_zero_needs_no_zero_kernel():
    """MobileNetV2: expand row and BN zeroed so ReLU6 emits 0; the depthwise kernel stays nonzero. The depthwise
    conv then outputs 0 there, its BN a constant, which folds into the 1x1 projection's (new) bias."""
    m = create_model("torchvision:mobilenet_v2").eval()
    randomize_bn(m)
    block = m.features[2].conv
    with torch.no_grad():
        block[0][0].weight[5] = 0
        block[0][1].weight[5] = 0.3
        block[0][1].bias[5] = -4.0  # relu6(0.3 * (0 - μ) / σ - 4) = 0
        block[1][1].weight[5] = 0.1
        block[1][1].bias[5] = 2.0  # the depthwise BN turns the 0 into a positive constant
        assert block[1][0].weight[5].abs().sum() > 0
    res = surgery(m, (3, 32, 32))
    assert res.removed["features.2.conv.0.0"] == [5]
    assert res.removed["features.2.conv.1.0"] == [5]
    assert "features.2.conv.2" in res.report["bias_added"]
    assert res.report["verification"]["relative_diff"] <= 1e-5


def test_untraceable_model_is_one_clear_error():
    m = create_model("tiny-mlp")
    with pytest.raises(SurgeryError, match=r"does not run on input of shape \(1, 5, 5\)"):
        surgery(m, (1, 5, 5))  # 25 features into a Linear that takes 16


def test_fully_dead_layer_keeps_one_channel():
    m = create_model("tiny-mlp").eval()
    with torch.no_grad():
        m[3].weight.zero_()
        m[3].bias.zero_()
    res = surgery(m, (1, 4, 4))
    assert res.model[3].out_features == 1 and res.model[5].in_features == 1
    assert sorted((k["layer"], k["reason"]) for k in res.report["kept"]) == [
        ("1", "a layer keeps at least one channel"), ("3", "a layer keeps at least one channel")]
    # Layer 1 feeds only zero weights: every consumer ignores its channels, so they go too (down to one).
    assert res.model[1].out_features == 1
    x = torch.randn(4, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(res.model(x), m(x), atol=1e-6)


def test_channel_ignored_by_every_consumer_is_removed():
    """Outgoing weights zero, incoming weights live (a neuron nobody listens to): removable whatever it emits."""
    m = create_model("tiny-resnet").eval()
    randomize_bn(m)
    with torch.no_grad():
        m.block1.conv2.weight[:, 2] = 0  # block1's internal channel 2 is read by conv2 only
    res = surgery(m, (1, 8, 8))
    assert res.removed["block1.conv1"] == [2] and res.removed["block1.bn1"] == [2]
    assert not res.report["folded"]
