"""Report plots (matplotlib, Agg): neurons per layer, SeReNe's Fig. 4 (surviving weights of the first FC layer in
black) and the parameters remaining per layer."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .. import _io

MAX_PIXELS = 1600
"""Larger weight matrices are reduced block-wise (a block is black when any weight in it survives)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with _io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_neurons(report: dict, path: Path) -> Path:
    """Bars of neurons (filters) per layer, baseline vs pruned."""
    import numpy as np

    plt = _pyplot()
    layers = report["layers"]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(layers) + 2), 3.6))
    ax.bar(x - 0.2, [r["neurons_before"] for r in layers], 0.4, label="baseline", color="0.7")
    ax.bar(x + 0.2, [r["neurons_after"] for r in layers], 0.4, label="pruned", color="C3")
    ax.set_xticks(x, [r["label"] for r in layers], rotation=90 if len(layers) > 10 else 0)
    ax.set_ylabel("neurons / filters")
    ax.set_yscale("log")
    ax.set_title(f"Remaining neurons per layer ({report.get('arch')}, {report.get('dataset')})", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_remaining(report: dict, path: Path) -> Path:
    """Bars of the parameters remaining per layer, in % of the baseline layer."""
    import numpy as np

    plt = _pyplot()
    layers = report["layers"]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(layers) + 2), 3.6))
    pct = [r["remaining_pct"] for r in layers]
    bars = ax.bar(x, pct, color="C0")
    if len(layers) <= 12:
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in pct], fontsize=7)
    ax.set_xticks(x, [r["label"] for r in layers], rotation=90 if len(layers) > 10 else 0)
    ax.set_ylim(0, 105)
    ax.set_ylabel("remaining parameters (%)")
    ax.set_title(f"Compression ratio {report['compression_ratio']:.2f}x", fontsize=9)
    return _save(fig, path)


def first_fc(model: nn.Module) -> tuple[str, nn.Linear] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            return name, m
    return None


def survivors_image(weight: torch.Tensor, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Bool image (rows = neurons, columns = inputs), True where a weight survives; reduced by blocks when large."""
    alive = weight.detach().ne(0).float()
    fr = max(1, -(-alive.shape[0] // max_pixels))
    fc = max(1, -(-alive.shape[1] // max_pixels))
    if fr > 1 or fc > 1:
        alive = torch.nn.functional.max_pool2d(alive[None, None], (fr, fc), ceil_mode=True)[0, 0]
    return alive.bool()


def plot_fc_mask(model: nn.Module, path: Path, title: str = "", label: str = "FC1") -> Path | None:
    """SeReNe Fig. 4: the first fully-connected layer's weight matrix, surviving parameters in black."""
    found = first_fc(model)
    if found is None:
        return None
    name, layer = found
    img = survivors_image(layer.weight)
    plt = _pyplot()
    h, w = img.shape
    fig, ax = plt.subplots(figsize=(min(12.0, max(4.0, w / 80)), min(8.0, max(2.5, h / 80))))
    ax.imshow(img.numpy(), cmap="gray_r", interpolation="nearest", aspect="auto", vmin=0, vmax=1)
    ax.set_xlabel(f"inputs ({layer.in_features})")
    ax.set_ylabel(f"neurons ({layer.out_features})")
    kept = int(layer.weight.ne(0).sum())
    ax.set_title(title or f"{label} ({name}): {kept:,} of {layer.weight.numel():,} weights remain (black)", fontsize=9)
    return _save(fig, path)
