"""Neuron-level thresholding: whole coupled neurons die (BN γ and β included), output exactly 0, surgery removes
exactly them and stays exact; the bisection honours its criterion, the output layer and a minimum width of one."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeprune.models import create_model
from edgeprune.surgery import surgery
from edgeprune.surgery.synthetic import randomize_bn
from edgeprune.threshold import apply_masks_, full_masks
from edgeprune.threshold.neurons import find_neuron_threshold, group_alive, neuron_groups, neuron_masks

CASES = [
    ("tiny-resnet", (1, 8, 8), {}),  # residual adds, 1×1 projection shortcut, BN
    ("resnet20-cifar", (1, 16, 16), {"in_channels": 1}),  # the BN conv net of the comparison
    ("unet-small", (3, 32, 32), {}),  # concatenations (skip connections)
    ("lenet5", (1, 28, 28), {}),  # conv → flatten → linear, no BN
]


class Concat(nn.Module):
    """Two BN branches concatenated, then a 1×1 conv: a neuron of one branch is a slice of the concat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.mix = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.mix(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(y.mean((2, 3)))


def _model(arch, kw):
    torch.manual_seed(0)
    m = (Concat() if arch == "concat" else create_model(arch, **kw)).eval()
    randomize_bn(m)  # BN must not be an identity: a zero-weight channel would still emit β
    return m


def _random_prune(m, shape, fraction=0.5, seed=0):
    groups = neuron_groups(m, shape)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for gi, group in enumerate(groups):
        k = min(group.size - 1, max(1, int(fraction * group.size)))
        chosen += [(gi, int(r)) for r in torch.randperm(group.size, generator=g)[:k]]
    masks = neuron_masks(groups, full_masks(m), chosen)
    apply_masks_(m, masks)
    return groups, masks, chosen


@pytest.mark.parametrize("arch,shape,kw", CASES + [("concat", (2, 6, 6), {})])
def test_pruned_neurons_output_exactly_zero_and_surgery_removes_exactly_them(arch, shape, kw, one_thread):
    m = _model(arch, kw)
    groups, masks, chosen = _random_prune(m, shape)
    assert chosen
    # Every member layer of a pruned neuron: its output channel is exactly 0 on any input (BN eval and train).
    outputs = {}
    mods = dict(m.named_modules())
    hooks = [mods[name].register_forward_hook(lambda mod, a, out, name=name: outputs.__setitem__(name, out))
             for group in groups for name, kind, _, _ in group.members]
    x = torch.randn(3, *shape) * 3
    with torch.no_grad():
        ref = m(x)
    for h in hooks:
        h.remove()
    for gi, r in chosen:
        for name, kind, ridx, midx in groups[gi].members:
            for rr, mm in zip(ridx.tolist(), midx.tolist()):
                if rr == r:
                    assert torch.count_nonzero(outputs[name][:, mm]) == 0, (name, kind, mm)
    # Every parameter of a pruned neuron is zero, BN γ and β included.
    for gi, group in enumerate(groups):
        alive = group_alive(group, masks)
        dead = {r for g, r in chosen if g == gi}
        assert {i for i in range(group.size) if not alive[i]} == dead
    res = surgery(m, shape)
    assert res.report["constant_channels_folded"] == 0  # all zero: nothing to fold
    removed_roots = {}
    for gi, r in chosen:
        removed_roots.setdefault(groups[gi].root, set()).add(r)
    for root, rs in removed_roots.items():
        assert set(res.removed[root]) == rs, root
    with torch.no_grad():
        out = res.model(x)
    assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_bn_channel_dies_in_train_mode_too():
    m = _model("tiny-resnet", {})
    groups, masks, chosen = _random_prune(m, (1, 8, 8))
    m.train()
    bn = [(name, midx, ridx) for gi, r in chosen for name, kind, ridx, midx in groups[gi].members if kind == "bn"]
    assert bn
    outs = {}
    mods = dict(m.named_modules())
    for name, _, _ in bn:
        mods[name].register_forward_hook(lambda mod, a, out, name=name: outs.__setitem__(name, out))
    m(torch.randn(4, 1, 8, 8))
    gi, r = chosen[0]
    for name, kind, ridx, midx in groups[gi].members:
        if kind == "bn":
            assert torch.count_nonzero(outs[name][:, int(midx[ridx == r][0])]) == 0


def test_output_layer_untouched_and_one_neuron_kept_per_group():
    m = _model("lenet5", {})
    groups = neuron_groups(m, (1, 28, 28))
    assert "9" not in {g.root for g in groups}  # the classifier (lenet5's last Linear) is not prunable
    res = find_neuron_threshold(m, full_masks(m), groups, lambda mm: 0.0, lambda v: True)
    assert res.pruned == sum(g.size - 1 for g in groups)
    for g in groups:
        assert int(group_alive(g, res.masks).sum()) == 1
    out_layer = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)][-1]
    assert res.masks[f"{out_layer}.weight"].all() and res.masks[f"{out_layer}.bias"].all()


def test_bisection_prunes_lowest_scores_first_and_the_largest_admissible_count(one_thread):
    m = _model("tiny-resnet", {})
    groups = neuron_groups(m, (1, 8, 8))
    counted = []

    def evaluate(mm):  # the criterion: how many neurons are dead (monotone in the count)
        masks = {n: p.detach().ne(0) for n, p in mm.named_parameters()}
        dead = sum(int((~group_alive(g, masks)).sum()) for g in groups)
        counted.append(dead)
        return float(dead)

    res = find_neuron_threshold(m, full_masks(m), groups, evaluate, lambda v: v <= 5)
    assert res.pruned == 5 and res.value == 5.0 and sum(res.per_group.values()) == 5
    assert res.evaluations <= 5  # ⌈log2 candidates⌉ + 1
    # The model is unchanged; the five pruned neurons are the five lowest-scored candidates.
    assert all(p.ne(0).any() for p in m.parameters())
    again = find_neuron_threshold(m, full_masks(m), groups, evaluate, lambda v: v <= 4)
    dead4 = {(g.root, i) for g in groups for i in range(g.size) if not group_alive(g, again.masks)[i]}
    dead5 = {(g.root, i) for g in groups for i in range(g.size) if not group_alive(g, res.masks)[i]}
    assert dead4 < dead5


def test_scale_free_score_ignores_a_layer_rescaling():
    from edgeprune.threshold.neurons import neuron_scores

    m = _model("lenet5", {})
    groups = neuron_groups(m, (1, 28, 28))
    g = next(gr for gr in groups if gr.root == "3")
    alive = torch.ones(g.size, dtype=torch.bool)
    before = neuron_scores(m, g, alive)
    with torch.no_grad():
        m.get_submodule("3").weight.mul_(7.0)
        m.get_submodule("3").bias.mul_(7.0)
    assert torch.allclose(neuron_scores(m, g, alive), before)
    with pytest.raises(ValueError, match="neuron score"):
        neuron_scores(m, g, alive, "bogus")


def _densenet():
    import torchvision

    return torchvision.models.densenet121(num_classes=10)


@pytest.mark.parametrize("name,make,shape", [
    ("tiny-resnet", lambda: create_model("tiny-resnet"), (1, 8, 8)),
    ("resnet20", lambda: create_model("resnet20-cifar", in_channels=1), (1, 16, 16)),
    ("densenet121", _densenet, (3, 64, 64)),  # pre-activation: a conv's BN is the next layer's norm
])
def test_the_neuron_counts_agree_everywhere(name, make, shape, one_thread):
    """After neuron pruning, four views count the same alive neurons per layer: the summary (`edgeprune info`,
    the report), the regularizer's neurons, the threshold's groups, and the slim model surgery builds."""
    from edgeprune.regularize.loop import neurons_alive
    from edgeprune.summary import summarize

    torch.manual_seed(0)
    m = make().eval()
    randomize_bn(m)
    groups, masks, chosen = _random_prune(m, shape, fraction=0.34)
    summary = {r.name: r.alive_neurons for r in summarize(m, shape).layers}
    regularize = neurons_alive(m)
    slim = {r.name: r.neurons for r in summarize(surgery(m, shape).model, shape).layers}
    threshold = {}
    for g in groups:
        alive = group_alive(g, masks)
        for mod_name, kind, ridx, midx in g.members:
            if kind in ("layer", "depthwise"):
                threshold[mod_name] = int(alive[ridx].sum())
    assert set(regularize) == set(summary) == set(slim)
    for layer in summary:
        assert summary[layer] == regularize[layer] == slim[layer] == threshold.get(layer, summary[layer]), layer
    assert sum(summary.values()) < sum(r.neurons for r in summarize(make(), shape).layers)


def test_taylor_score_is_the_squared_directional_derivative_of_the_loss(one_thread):
    """Independent truth: the loss's derivative along the direction that shrinks the whole neuron (all its coupled
    parameters, BN included) to zero, by central finite differences in float64, squared and averaged over batches."""
    import torch.nn.functional as F

    from edgeprune.threshold.neurons import taylor_scores

    m = _model("tiny-resnet", {}).double()
    groups = neuron_groups(m, (1, 8, 8))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
               for _ in range(2)]
    got = taylor_scores(m, groups, batches)
    params = dict(m.named_parameters())
    eps = 1e-6
    for gi in (0, len(groups) - 1):
        group = groups[gi]
        for r in range(group.size):
            direction = {n: torch.zeros_like(p) for n, p in params.items()}
            for pname, dim, ridx, midx in group.params:
                sel = midx[ridx == r]
                view = direction[pname].movedim(dim, 0)
                view[sel] = params[pname].detach().movedim(dim, 0)[sel]
            want = 0.0
            for x, y in batches:
                losses = []
                for sign in (1, -1):
                    with torch.no_grad():
                        for n, p in params.items():
                            p.sub_(sign * eps * direction[n])
                        losses.append(float(F.cross_entropy(m(x), y)))
                        for n, p in params.items():
                            p.add_(sign * eps * direction[n])
                want += ((losses[0] - losses[1]) / (2 * eps)) ** 2
            want /= len(batches)
            assert float(got[gi][r]) == pytest.approx(want, rel=1e-4, abs=1e-12), (group.root, r)


def test_taylor_ranking_needs_data_and_leaves_the_model_unchanged():
    from edgeprune.threshold.neurons import taylor_scores

    m = _model("tiny-resnet", {})
    groups = neuron_groups(m, (1, 8, 8))
    with pytest.raises(ValueError, match="taylor"):
        find_neuron_threshold(m, full_masks(m), groups, lambda mm: 0.0, lambda v: True, "taylor")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    scores = taylor_scores(m, groups, [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))])
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())
    res = find_neuron_threshold(m, full_masks(m), groups, lambda mm: 0.0, lambda v: True, "taylor", scores=scores)
    assert res.pruned == sum(g.size - 1 for g in groups)


@pytest.mark.parametrize("arch,shape,kw", [("lenet5", (1, 28, 28), {}), ("tiny-resnet", (1, 8, 8), {})])
def test_neuron_macs_is_what_removing_the_neuron_saves(arch, shape, kw, one_thread):
    """Independent truth: cut exactly one neuron with surgery and count the MACs of the slim model."""
    from edgeprune.summary import summarize
    from edgeprune.threshold.neurons import neuron_macs

    m = _model(arch, kw)
    groups = neuron_groups(m, shape)
    costs = neuron_macs(m, groups, shape)
    dense = summarize(m, shape).macs
    for gi, group in enumerate(groups):
        trial = _model(arch, kw)
        apply_masks_(trial, neuron_masks(groups, full_masks(trial), [(gi, 0)]))
        saved = dense - summarize(surgery(trial, shape).model, shape).macs
        assert float(costs[gi][0]) == pytest.approx(saved, rel=0.02), group.root


def test_macs_cost_moves_expensive_neurons_first():
    from edgeprune.threshold.neurons import neuron_macs

    m = _model("lenet5", {})
    groups = neuron_groups(m, (1, 28, 28))
    flat = [torch.ones(g.size, dtype=torch.float64) for g in groups]  # equal importance everywhere
    costs = neuron_macs(m, groups, (1, 28, 28))
    res = find_neuron_threshold(m, full_masks(m), groups, lambda mm: 0.0, lambda v: True, scores=flat, costs=costs)
    assert res.pruned == sum(g.size - 1 for g in groups)


    def dead(mm):
        zeros = {n: p.detach().ne(0) for n, p in mm.named_parameters()}
        return float(sum(int((~group_alive(g, zeros)).sum()) for g in groups))

    one = find_neuron_threshold(m, full_masks(m), groups, dead, lambda v: v <= 1, scores=flat, costs=costs)
    dearest = max(range(len(groups)), key=lambda gi: float(costs[gi].max()))
    assert one.pruned == 1 and list(one.per_group) == [groups[dearest].root]
    cheapest = min(range(len(groups)), key=lambda gi: float(costs[gi].min()))
    plain = find_neuron_threshold(m, full_masks(m), groups, dead, lambda v: v <= 1, scores=flat)
    assert groups[dearest].root != groups[cheapest].root and plain.pruned == 1
