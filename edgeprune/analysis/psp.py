"""Collect post-synaptic potentials (PSP, pruning-minima paper eq. 2) of every ReLU-activated layer and stream
the counts PSP-entropy needs (:mod:`edgeprune.analysis.entropy`), plus the mean squared PSP (the paper's Fig. 3).

The PSP of a layer is the input of its ``nn.ReLU`` module (captured with a forward pre-hook, before an in-place ReLU
overwrites it). That is the conv / linear output, or the BatchNorm output when a BN sits in between (the affine map
f of eq. 1 then includes BN). Functional ``F.relu`` calls are invisible; a module called twice per forward yields two
layers (``name#2``).

Convolutional feature maps: with ``conv_mode="filter"`` (default) a filter is one neuron and every spatial position
of every input is one observation of its state, so p[φ'=t|c] is a frequency over inputs × positions of class c.
With ``conv_mode="unit"`` every (channel, position) is its own neuron (as the authors' reference code does).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn as nn

from ..errors import ConfigError, ModelError
from .entropy import all_pairs_entropy, first_order_entropy, second_order_entropy

log = logging.getLogger(__name__)

CONV_MODES = ("filter", "unit")
ALL_PAIRS_MAX_NEURONS = 1024
"""Layers up to this many neurons get every pair's second-order entropy unless a pair budget is given…"""
ALL_PAIRS_MAX_ENTRIES = 1 << 25
"""…and as long as the per-class pair counts (classes × n², float64) stay under this many entries (256 MiB)."""
DEFAULT_PAIR_SAMPLE = 100_000


@dataclasses.dataclass
class LayerEntropy:
    name: str
    """The ReLU module hooked (``#k`` for its k-th call in one forward)."""
    neurons: int
    positions: int
    """Observations per input (spatial positions in ``filter`` mode, else 1)."""
    samples_per_class: list[int]
    h1: torch.Tensor
    """First-order PSP-entropy per neuron (eq. 5), bits."""
    h1_classwise: torch.Tensor
    """[C, n] per-class entropies (eq. 4)."""
    on_fraction: torch.Tensor
    """Fraction of observations with z > 0, per neuron."""
    psp_sq_mean: float
    """Mean of z² over inputs, positions and neurons (Fig. 3)."""
    psp_sq_per_neuron: torch.Tensor
    h2: torch.Tensor | None = None
    """Second-order entropy per pair (all pairs i<j in row-major order, or the sampled ``pair_index``)."""
    pair_index: torch.Tensor | None = None
    """[2, P] sampled pairs, or None when ``h2`` covers all pairs."""
    producer: str | None = None
    """The conv / linear layer registered last before this ReLU (whose output, maybe through BN, is the PSP)."""


class _LayerStats:
    """Streaming counts of one layer."""

    def __init__(self, num_classes: int, second_order: bool, pair_budget: int | None, seed: int):
        self.c = num_classes
        self.second_order = second_order
        self.pair_budget = pair_budget
        self.seed = seed
        self.n = None
        self.positions = 1
        self.totals = torch.zeros(num_classes, dtype=torch.float64)
        self.samples = torch.zeros(num_classes, dtype=torch.float64)
        self.on = None
        self.on11 = None
        self.pairs = None
        self.sq = None

    def _init(self, n: int, positions: int, device) -> None:
        self.n, self.positions = n, positions
        self.on = torch.zeros(self.c, n, dtype=torch.float64, device=device)
        self.sq = torch.zeros(n, dtype=torch.float64, device=device)
        self.totals = self.totals.to(device)
        self.samples = self.samples.to(device)
        if self.second_order:
            n_pairs = n * (n - 1) // 2
            budget = self.pair_budget
            if budget is None and (n > ALL_PAIRS_MAX_NEURONS or self.c * n * n > ALL_PAIRS_MAX_ENTRIES):
                budget = DEFAULT_PAIR_SAMPLE
            if budget is not None and budget < n_pairs:
                self.pairs = _sample_pairs(n, budget, self.seed).to(device)
                self.on11 = torch.zeros(self.c, budget, dtype=torch.float64, device=device)
            else:
                self.on11 = torch.zeros(self.c, n, n, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """``z``: [N, n, S] PSPs (S observations per input), ``y``: [N] labels."""
        if self.n is None:
            self._init(z.shape[1], z.shape[2], z.device)
        elif z.shape[1] != self.n or z.shape[2] != self.positions:
            raise ModelError("a ReLU layer changed shape between batches; PSP-entropy needs fixed input sizes")
        z = z.detach()
        s = (z > 0).to(torch.float32)
        onehot = torch.nn.functional.one_hot(y, self.c).to(torch.float32)
        per_class = onehot.sum(0).to(torch.float64)
        self.samples += per_class
        self.totals += per_class * z.shape[2]
        # counts stay exact in float32 within one batch (< 2**24), then accumulate in float64
        self.on += (onehot.T @ s.sum(2)).to(torch.float64)
        self.sq += z.to(torch.float64).pow(2).sum((0, 2))
        if not self.second_order:
            return
        if self.pairs is not None:
            both = s[:, self.pairs[0], :] * s[:, self.pairs[1], :]
            self.on11 += (onehot.T @ both.sum(2)).to(torch.float64)
            return
        for c in torch.unique(y).tolist():
            sc = s[y == c].permute(0, 2, 1).reshape(-1, self.n)
            self.on11[c] += (sc.T @ sc).to(torch.float64)

    def result(self, name: str) -> LayerEntropy:
        h1, h1c = first_order_entropy(self.on, self.totals)
        obs = float(self.totals.sum())
        le = LayerEntropy(
            name=name, neurons=self.n, positions=self.positions,
            samples_per_class=[int(v) for v in self.samples.tolist()],
            h1=h1.cpu(), h1_classwise=h1c.cpu(), on_fraction=(self.on.sum(0) / max(obs, 1.0)).cpu(),
            psp_sq_mean=float(self.sq.sum() / max(obs * self.n, 1.0)), psp_sq_per_neuron=(self.sq / max(obs, 1)).cpu(),
        )
        if self.second_order:
            if self.pairs is None:
                le.h2 = all_pairs_entropy(self.on, self.on11, self.totals).cpu()
            else:
                i, j = self.pairs
                le.h2 = second_order_entropy(self.on11, self.on[:, i], self.on[:, j], self.totals).cpu()
                le.pair_index = self.pairs.cpu()
        return le


def _sample_pairs(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct pairs i < j drawn uniformly (seeded) among the n(n−1)/2 of a layer: [2, count]."""
    g = torch.Generator().manual_seed(seed)
    total = n * (n - 1) // 2
    if total <= 5_000_000:
        iu = torch.triu_indices(n, n, offset=1)
        return iu[:, torch.randperm(total, generator=g)[:count].sort().values]
    # large layers: rejection sampling of encoded pairs i·n + j (count ≪ total here, so few rounds)
    chosen = torch.empty(0, dtype=torch.long)
    while chosen.numel() < count:
        a = torch.randint(0, n, (2, 2 * count), generator=g)
        a = a[:, a[0] != a[1]]
        code = torch.minimum(a[0], a[1]) * n + torch.maximum(a[0], a[1])
        chosen = torch.unique(torch.cat([chosen, code]))
    chosen = chosen[torch.randperm(chosen.numel(), generator=g)[:count]].sort().values
    return torch.stack([chosen // n, chosen % n])


def relu_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not layers:
        raise ModelError("the model has no nn.ReLU modules; PSP-entropy needs ReLU-activated layers built as modules")
    return layers


@torch.no_grad()
def psp_entropy(model: nn.Module, batches, num_classes: int, second_order: bool = False,
                pairs: int | None = None, conv_mode: str = "filter", device: torch.device | str = "cpu",
                seed: int = 0, description: str | None = "PSP-entropy") -> list[LayerEntropy]:
    """First- (and optionally second-) order PSP-entropy and mean squared PSP of every ReLU layer of ``model`` over
    ``batches`` of (inputs, labels). ``pairs`` caps the pairs per layer (a seeded uniform sample of distinct pairs);
    by default layers with at most :data:`ALL_PAIRS_MAX_NEURONS` neurons get all pairs, larger ones a sample of
    :data:`DEFAULT_PAIR_SAMPLE`. The model runs in eval mode."""
    from .._progress import make_progress

    if conv_mode not in CONV_MODES:
        raise ConfigError(f"conv mode must be one of {', '.join(CONV_MODES)}, got {conv_mode!r}")
    if pairs is not None and pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, got {pairs}")
    layers = relu_layers(model)
    stats: dict[str, _LayerStats] = {}
    calls: dict[str, int] = {}
    current: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, inputs):
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            z = inputs[0]
            if z.dim() > 2:
                z = z.reshape(z.shape[0], z.shape[1], -1) if conv_mode == "filter" else z.reshape(z.shape[0], -1, 1)
            else:
                z = z.reshape(z.shape[0], -1, 1)
            if key not in stats:
                stats[key] = _LayerStats(num_classes, second_order, pairs, seed + len(stats))
            stats[key].update(z, current["y"])
        return hook

    was_training = model.training
    model.eval().to(device)
    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in layers]
    try:
        with make_progress() as progress:
            task = progress.add_task(description, total=len(batches), info="") if description else None
            for x, y in batches:
                x, y = x.to(device), y.to(device).long()
                if int(y.min()) < 0 or int(y.max()) >= num_classes:
                    raise ConfigError(f"labels outside 0..{num_classes - 1}; is the dataset the model's?")
                current["y"] = y
                calls.clear()
                model(x)
                if task is not None:
                    progress.advance(task)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    producers = _producers_before(model)
    results = [s.result(name) for name, s in stats.items()]
    for le in results:
        le.producer = producers.get(le.name.split("#")[0])
    return results


def _producers_before(model: nn.Module) -> dict[str, str]:
    """ReLU module name → name of the last conv / linear module registered before it (a readable layer label)."""
    from ..summary import PRODUCERS

    out, last = {}, None
    for name, m in model.named_modules():
        if isinstance(m, PRODUCERS):
            last = name
        elif isinstance(m, nn.ReLU) and last is not None:
            out[name] = last
    return out
