"""Populations of neuron sensitivities (exact, LB, UB) on a trained model, per layer type: SeReNe Fig. 3."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from .._progress import track
from .neurons import find_neurons
from .sensitivity import neuron_sensitivity

log = logging.getLogger(__name__)

FIG3_METHODS = ("exact", "lb", "ub")
LABELS = {"exact": "SeReNe (exact) S", "lb": "SeReNe (LB) S^l", "ub": "SeReNe (UB) S^u"}
COLORS = {"exact": "tab:red", "lb": "tab:green", "ub": "tab:blue"}


def sensitivity_populations(model: nn.Module, batches, n_batches: int = 10, device: str | torch.device = "cpu",
                            methods=FIG3_METHODS, class_chunk: int = 16) -> dict:
    """Per method and layer type ("conv" / "fc"): every hidden neuron's sensitivity averaged over ``n_batches``
    batches (eval mode, the network as deployed). Output layers are left out (their S is 1/C by construction)."""
    model = model.to(device).eval()
    ng = find_neurons(model)
    hidden = ng.hidden()
    sums = {m: {nl.name: None for nl in hidden} for m in methods}
    count = 0
    for i, (x, _) in enumerate(track(batches, "sensitivity", total=min(n_batches, len(batches)))):
        if i >= n_batches:
            break
        x = x.to(device)
        for m in methods:
            vals = neuron_sensitivity(model, x, m, ng=ng, layers=hidden, class_chunk=class_chunk)
            for name, v in vals.items():
                sums[m][name] = v if sums[m][name] is None else sums[m][name] + v
        count += 1
    out: dict = {m: {} for m in methods}
    for m in methods:
        for nl in hidden:
            kind = "fc" if isinstance(nl.layer, nn.Linear) else "conv"
            v = (sums[m][nl.name] / max(count, 1)).cpu()
            out[m].setdefault(kind, []).append(v)
        out[m] = {k: torch.cat(v).numpy() for k, v in out[m].items()}
    return out


def plot_populations(pops: dict, path: str | Path, title: str = "") -> Path:
    """Histograms on a log axis with vertical bars at the means (SeReNe Fig. 3), one panel per layer type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = sorted({k for m in pops for k in pops[m]})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        positive = np.concatenate([pops[m][kind][pops[m][kind] > 0] for m in pops if kind in pops[m]])
        if positive.size == 0:
            continue
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, 40)
        for m in pops:
            v = pops[m].get(kind)
            if v is None:
                continue
            ax.hist(v[v > 0], bins=bins, alpha=0.45, color=COLORS.get(m), label=LABELS.get(m, m))
            ax.axvline(float(v.mean()), color=COLORS.get(m), linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("sensitivity")
        ax.set_ylabel("neurons")
        ax.set_title(f"{kind} layers")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .. import _io

    with _io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
