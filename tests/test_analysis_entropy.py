"""PSP-entropy (pruning-minima paper eqs. 4–5 and second order) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from edgeprune.analysis.entropy import (all_pairs_entropy, binary_entropy, entropy_from_states, first_order_entropy,
                                        second_order_entropy)
from edgeprune.analysis.psp import _sample_pairs, psp_entropy

H_QUARTER = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))  # 0.8113 bits

# Two classes of four samples each (rows), six neurons (columns); "off" entries are 0 or negative (φ'(0) = 0).
STATES = torch.tensor([
    # n0 on  n1 half n2 c0-only n3 quarter n4 indep(n1) n5 = n1 (other magnitudes)
    [1.0,   1.0,    1.0,       1.0,       1.0,         2.0],
    [1.0,   1.0,    1.0,       0.0,       -1.0,        3.0],
    [1.0,   0.0,    1.0,       -2.0,      1.0,         0.0],
    [1.0,   -1.0,   1.0,       0.0,       0.0,         -5.0],
    [1.0,   1.0,    0.0,       0.0,       1.0,         5.0],
    [2.0,   1.0,    -1.0,      0.0,       0.0,         1.0],
    [3.0,   0.0,    0.0,       -1.0,      1.0,         0.0],
    [1.0,   -3.0,   0.0,       0.0,       -1.0,        -1.0],
], dtype=torch.float32)
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
EXPECTED_H1 = [0.0, 2.0, 0.0, H_QUARTER, 2.0, 2.0]
# Pairs (i, j): hand-computed joint-state entropies summed over both classes.
EXPECTED_H2 = {
    (0, 1): 2.0,    # per class: (1,1) and (1,0) half each → 1 bit
    (1, 4): 4.0,    # per class: all four joint states once → 2 bits
    (1, 5): 2.0,    # identical states → 1 bit per class
    (0, 2): 0.0,    # constant joint state within each class
    (1, 3): 2.5,    # class 0: 1/4, 1/4, 1/2 → 1.5 bits; class 1: 1/2, 1/2 → 1 bit
    (3, 2): H_QUARTER,  # class 0: (1,1) once, (0,1) three times; class 1: constant (0,0)
}


def _identity_relu():
    return nn.Sequential(nn.Identity(), nn.ReLU())


def test_binary_entropy_endpoints():
    p = torch.tensor([0.0, 1.0, 0.5, 0.25])
    assert binary_entropy(p).tolist() == pytest.approx([0.0, 0.0, 1.0, H_QUARTER])


def test_first_order_direct_form_matches_hand_values():
    h = entropy_from_states(STATES, LABELS, 2)
    assert h.tolist() == pytest.approx(EXPECTED_H1, abs=1e-12)


def test_streamed_first_and_second_order_match_hand_values():
    batches = [(STATES[:3], LABELS[:3]), (STATES[3:6], LABELS[3:6]), (STATES[6:], LABELS[6:])]
    (layer,) = psp_entropy(_identity_relu(), batches, num_classes=2, second_order=True, description=None)
    assert layer.neurons == 6 and layer.samples_per_class == [4, 4]
    assert layer.h1.tolist() == pytest.approx(EXPECTED_H1, abs=1e-12)
    assert layer.h1_classwise[:, 1].tolist() == pytest.approx([1.0, 1.0])
    assert layer.h1_classwise[:, 3].tolist() == pytest.approx([H_QUARTER, 0.0])
    assert layer.pair_index is None and layer.h2.numel() == 15
    iu = torch.triu_indices(6, 6, offset=1).T.tolist()
    for (i, j), expected in EXPECTED_H2.items():
        k = iu.index(sorted([i, j]))
        assert float(layer.h2[k]) == pytest.approx(expected, abs=1e-12), (i, j)
    assert layer.psp_sq_mean == pytest.approx(float(STATES.pow(2).mean()))


def test_sampled_pairs_agree_with_all_pairs():
    batches = [(STATES, LABELS)]
    (full,) = psp_entropy(_identity_relu(), batches, 2, second_order=True, description=None)
    (some,) = psp_entropy(_identity_relu(), batches, 2, second_order=True, pairs=5, description=None)
    assert some.pair_index.shape == (2, 5)
    iu = torch.triu_indices(6, 6, offset=1).T.tolist()
    for k in range(5):
        i, j = some.pair_index[:, k].tolist()
        assert i < j
        assert float(some.h2[k]) == pytest.approx(float(full.h2[iu.index([i, j])]), abs=1e-12)


def test_second_order_bounds_and_pure_functions_agree():
    g = torch.Generator().manual_seed(1)
    s = (torch.rand(300, 7, generator=g) > 0.5).float()
    y = torch.randint(0, 3, (300,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    on = onehot.T @ s.double()
    on11 = torch.stack([s[y == c].double().T @ s[y == c].double() for c in range(3)])
    totals = onehot.sum(0)
    h2 = all_pairs_entropy(on, on11, totals)
    assert h2.shape == (21,)
    assert float(h2.min()) >= 0 and float(h2.max()) <= 2 * 3 + 1e-12
    # the pair entropy of a neuron with itself is its first-order entropy
    diag = second_order_entropy(torch.diagonal(on11, dim1=1, dim2=2), on, on, totals)
    assert diag.tolist() == pytest.approx(first_order_entropy(on, totals)[0].tolist(), abs=1e-12)


def test_conv_filter_and_unit_modes():
    # one filter on a 2×2 map: position (0,0) always on; (1,1) on for class 0 only; the rest off
    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = 1.0
    x[:2, 0, 1, 1] = 1.0  # class 0 samples switch one more position on
    y = torch.tensor([0, 0, 1, 1])
    (filt,) = psp_entropy(_identity_relu(), [(x, y)], 2, conv_mode="filter", description=None)
    assert filt.neurons == 1 and filt.positions == 4
    # class 0: 2 of 4 positions on → 1 bit; class 1: 1 of 4 → H(1/4)
    assert filt.h1.tolist() == pytest.approx([1.0 + H_QUARTER])
    (unit,) = psp_entropy(_identity_relu(), [(x, y)], 2, conv_mode="unit", description=None)
    assert unit.neurons == 4 and unit.positions == 1
    assert unit.h1.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])  # every unit is constant within each class


def test_streamed_entropy_matches_direct_on_a_real_cnn():
    from edgeprune.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny-cnn").eval()
    x = torch.randn(40, 1, 8, 8)
    y = torch.randint(0, 3, (40,))
    captured = {}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    hooks = [m.register_forward_pre_hook(lambda mod, inp, k=k: captured.__setitem__(k, inp[0].detach()))
             for k, m in enumerate(relus)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    layers = psp_entropy(model, [(x[:25], y[:25]), (x[25:], y[25:])], 3, description=None)
    assert len(layers) == 3
    for k, le in enumerate(layers):
        z = captured[k]
        if z.dim() == 4:  # filter mode: every position is an observation with its input's label
            states = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            labels = y.repeat_interleave(z.shape[2] * z.shape[3])
        else:
            states, labels = z, y
        assert le.h1.tolist() == pytest.approx(entropy_from_states(states, labels, 3).tolist(), abs=1e-9)


def test_pair_sampling_large_layer_is_distinct_and_ordered():
    pairs = _sample_pairs(4000, 3000, seed=3)  # 8M pairs: the rejection-sampling path
    assert pairs.shape == (2, 3000)
    assert bool((pairs[0] < pairs[1]).all()) and int(pairs.max()) < 4000
    assert len(set(map(tuple, pairs.T.tolist()))) == 3000


def test_no_relu_modules_is_a_clear_error():
    from edgeprune.errors import ModelError

    with pytest.raises(ModelError, match="nn.ReLU"):
        psp_entropy(nn.Sequential(nn.Linear(2, 2)), [(torch.zeros(1, 2), torch.zeros(1).long())], 2,
                    description=None)
