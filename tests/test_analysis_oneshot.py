"""One-shot pruning controls: magnitude masks, rewinding, re-init, random structures, pinned training."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeprune.masks import (sparsity_masks, masks_from_zeros, pinning_hooks, prunable_parameters,
                                      random_structure_masks, sparsity_of)
from edgeprune.analysis.oneshot import prepare_model, train_masked
from edgeprune.data import Batches, TensorSplit
from edgeprune.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_and_init(arch="tiny-cnn"):
    torch.manual_seed(0)
    model = create_model(arch)
    init = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # a stand-in for training: every parameter moves away from its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model, init


def test_sparsity_masks_are_global_and_exact():
    model, _ = _trained_and_init()
    masks = sparsity_masks(model, 0.7)
    params = prunable_parameters(model)
    n = sum(p.numel() for p in params.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.7 * n)
    assert sparsity_of(masks) == pytest.approx(round(0.7 * n) / n)
    kept = torch.cat([p.detach().abs().flatten()[m.flatten()] for p, m in zip(params.values(), masks.values())])
    pruned = torch.cat([p.detach().abs().flatten()[~m.flatten()] for p, m in zip(params.values(), masks.values())])
    assert float(kept.min()) >= float(pruned.max())  # one threshold over all layers
    # The same parameter set as the gradual loop thresholds: every parameter, BatchNorm (module 1) included, so a
    # one-shot control and a SeReNe run are pruned under one policy on BN nets.
    assert set(masks) == {n for n, _ in model.named_parameters()} and "1.weight" in masks and "1.bias" in masks


def test_rewind_restores_exact_initial_values_of_survivors():
    model, init = _trained_and_init()
    before = copy.deepcopy(model.state_dict())
    masks = sparsity_masks(model, 0.6)
    rewound, used = prepare_model(model, model.edgeprune_arch, masks, "rewind", init_state=init)
    assert used is masks
    state = rewound.state_dict()
    for name, m in masks.items():
        assert torch.equal(state[name][m], init[name][m])
        assert bool((state[name][~m] == 0).all())
    for name in state:  # everything unmasked (BN, buffers) is rewound too
        if name not in masks:
            assert torch.equal(state[name], init[name])
    for name, v in model.state_dict().items():  # the baseline is left untouched
        assert torch.equal(v, before[name])


def test_finetune_keeps_trained_survivors():
    model, _ = _trained_and_init()
    masks = sparsity_masks(model, 0.5)
    tuned, _ = prepare_model(model, model.edgeprune_arch, masks, "finetune")
    for name, p in prunable_parameters(tuned).items():
        ref = dict(model.named_parameters())[name].detach()
        assert torch.equal(p.detach(), ref * masks[name])


def test_reinit_changes_values_but_keeps_the_mask():
    model, init = _trained_and_init()
    masks = sparsity_masks(model, 0.6)
    a, ma = prepare_model(model, model.edgeprune_arch, masks, "reinit", seed=1)
    b, _ = prepare_model(model, model.edgeprune_arch, masks, "reinit", seed=2)
    assert ma is masks
    for name, m in masks.items():
        va, vb = dict(a.named_parameters())[name].detach(), dict(b.named_parameters())[name].detach()
        assert not bool((va.ne(0) & ~m).any())  # pruned entries are zero
        if not bool(m.any()) or bool((init[name] == init[name].flatten()[0]).all()):
            continue  # nothing kept, or a deterministic init (BatchNorm γ = 1, β = 0) that a redraw repeats
        assert torch.equal(va.ne(0), m)  # same structure (a random init draws no exact zeros)
        assert not torch.equal(va[m], init[name][m])
        assert not torch.equal(va[m], dict(model.named_parameters())[name].detach()[m])
        assert not torch.equal(va[m], vb[m])  # seeds give different inits


def test_reinit_differs_from_the_init_of_a_baseline_trained_with_the_same_seed():
    # `edgeprune train --seed 0` draws its initial weights right after torch.manual_seed(0)
    torch.manual_seed(0)
    model = create_model("tiny-mlp")
    init = copy.deepcopy(model.state_dict())
    masks = sparsity_masks(model, 0.5)
    net, _ = prepare_model(model, model.edgeprune_arch, masks, "reinit", seed=0)
    assert not torch.equal(net.state_dict()["1.weight"][masks["1.weight"]], init["1.weight"][masks["1.weight"]])


def test_random_structure_keeps_per_layer_counts():
    model, init = _trained_and_init()
    masks = sparsity_masks(model, 0.75)
    rnd = random_structure_masks(masks, seed=3)
    assert rnd.keys() == masks.keys()
    for name in masks:
        assert int(rnd[name].sum()) == int(masks[name].sum())
    assert any(not torch.equal(rnd[n], masks[n]) for n in masks)
    assert any(not torch.equal(rnd[n], random_structure_masks(masks, seed=4)[n]) for n in masks if masks[n].numel() > 4)
    net, used = prepare_model(model, model.edgeprune_arch, masks, "random-structure", seed=3)
    nonzero = masks_from_zeros(net)
    for name, m in used.items():
        assert torch.equal(m, rnd[name])
        assert not bool((nonzero[name] & ~m).any())  # every pruned entry is zero
        if not bool((init[name] == 0).all()):  # survivors rewound to a zero init (BatchNorm β) stay 0
            assert torch.equal(nonzero[name], m)


def test_pinned_training_keeps_pruned_entries_exactly_zero():
    torch.manual_seed(0)
    model = create_model("tiny-mlp")
    masks = sparsity_masks(model, 0.8)
    net, _ = prepare_model(model, model.edgeprune_arch, masks, "finetune")
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = torch.randn(96, 1, 4, 4)
    y = torch.randint(0, 3, (96,))
    history = train_masked(net, masks, Batches(TensorSplit(x, y), 16, shuffle=True), epochs=2, lr=0.1,
                           weight_decay=1e-3)
    assert len(history) == 2
    params = dict(net.named_parameters())
    for name, m in masks.items():
        assert bool((params[name].detach()[~m] == 0).all()), name
    moved = sum(int((params[n].detach()[m] != start[n][m]).sum()) for n, m in masks.items())
    assert moved > 0.9 * sum(int(m.sum()) for m in masks.values())


def test_pinning_zeroes_momentum_of_pruned_entries():
    torch.manual_seed(0)
    model = create_model("tiny-mlp")
    masks = sparsity_masks(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before, after = pinning_hooks(model, masks, opt)
    # a step without the pre-step hook builds momentum on pruned entries; after_step must clear it
    model(torch.randn(8, 1, 4, 4)).pow(2).mean().backward()
    opt.step()
    after()
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert bool((opt.state[params[name]]["momentum_buffer"][~m] == 0).all())
        assert bool((params[name].detach()[~m] == 0).all())
