"""Figures of the pruning-minima analysis (PNG): entropy histograms (Fig. 4), mean squared PSP per layer (Fig. 3),
the loss plane (Fig. 2a), top Hessian eigenvalues (Fig. 2b) and error against compression (Fig. 1)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
          "tab:cyan", "tab:gray")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from .. import _io

    path = Path(path)
    with _io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def entropy_histograms(models: Sequence[tuple[str, list]], path: str | os.PathLike, order: int = 1,
                       num_classes: int | None = None) -> Path:
    """One panel per layer, one histogram per model (``models``: ``(label, [LayerEntropy])``), of the first- or
    second-order PSP-entropy. The x-axis spans the possible range: 0 … C bits (order 1) or 0 … 2C (order 2)."""
    plt = _pyplot()
    names = [le.name for le in models[0][1]]
    titles = {le.name: f"{le.producer} → ReLU {le.name}" if le.producer else f"ReLU {le.name}" for le in models[0][1]}
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    top = (num_classes or 0) * order
    for ax, name in zip(axes.flat, names):
        for k, (label, layers) in enumerate(models):
            le = next((x for x in layers if x.name == name), None)
            values = None if le is None else (le.h1 if order == 1 else le.h2)
            if values is None or values.numel() == 0:
                continue
            hi = top or float(values.max()) or 1.0
            ax.hist(values.numpy(), bins=40, range=(0, hi), alpha=0.55, color=COLORS[k % len(COLORS)],
                    label=f"{label} (mean {float(values.mean()):.2f})", density=True)
        ax.set_title(titles[name] + (" (pairs)" if order == 2 else ""), fontsize=9)
        ax.set_xlabel(f"{'first' if order == 1 else 'second'}-order PSP-entropy [bits]", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"PSP-entropy, order {order}", y=1.03)
    return _save(fig, path)


def psp_norm_bars(models: Sequence[tuple[str, list]], path: str | os.PathLike) -> Path:
    """Mean squared PSP per layer for each model (the paper's Fig. 3)."""
    plt = _pyplot()
    names = [le.name for le in models[0][1]]
    ticks = [le.producer or le.name for le in models[0][1]]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names) * len(models)), 3.2))
    width = 0.8 / len(models)
    for k, (label, layers) in enumerate(models):
        by = {le.name: le.psp_sq_mean for le in layers}
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, [by.get(n, float("nan")) for n in names], width, label=label, color=COLORS[k % len(COLORS)])
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(names))], ticks, fontsize=8)
    ax.set_ylabel("mean z² (PSP)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_plane_figure(result: dict, path: str | os.PathLike, labels: tuple[str, str] = ("A", "B")) -> Path:
    """Filled contours of log10 training loss on the plane, both solutions marked."""
    plt = _pyplot()
    a = torch.tensor(result["alphas"])
    b = torch.tensor(result["betas"])
    loss = torch.tensor(result["loss"], dtype=torch.float64).clamp_min(1e-12).log10()
    fig, ax = plt.subplots(figsize=(6, 4.6))
    cs = ax.contourf(a.numpy(), b.numpy(), loss.numpy(), levels=30, cmap="viridis")
    ax.contour(a.numpy(), b.numpy(), loss.numpy(), levels=12, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(cs, ax=ax, label="log10 training loss")
    for x, name, val in ((0.0, labels[0], result["loss_a"]), (1.0, labels[1], result["loss_b"])):
        ax.plot([x], [0.0], marker="*", markersize=14, color="red", markeredgecolor="black")
        ax.annotate(f"{name}\nloss {val:.3g}", (x, 0.0), textcoords="offset points", xytext=(6, 8), color="white",
                    fontsize=9, fontweight="bold")
    ax.set_xlabel(f"α (towards {labels[1]}; ‖B−A‖ = {result['distance']:.3g})")
    ax.set_ylabel("β (random filter-normalized direction, orthogonal to B−A)")
    return _save(fig, path)


def eigenvalue_bars(results: Sequence[tuple[str, list[float]]], path: str | os.PathLike) -> Path:
    """Top Hessian eigenvalues of several solutions side by side (the paper's Fig. 2b)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    k = max(len(v) for _, v in results)
    width = 0.8 / len(results)
    for m, (label, values) in enumerate(results):
        ax.bar([i + m * width for i in range(len(values))], values, width, label=label, color=COLORS[m % len(COLORS)])
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(k)], [f"λ{i + 1}" for i in range(k)])
    ax.set_ylabel("Hessian eigenvalue")
    ax.legend(fontsize=8)
    return _save(fig, path)


def error_vs_compression(series: dict[str, list[tuple[float, float, float]]], path: str | os.PathLike,
                         baseline_error: float | None = None) -> Path:
    """Test error against pruned fraction, one line per method: ``series[label] = [(sparsity, error_mean,
    error_std), …]`` (the paper's Fig. 1)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (label, points) in enumerate(series.items()):
        pts = sorted(points)
        xs = [100 * p[0] for p in pts]
        ys = [100 * p[1] for p in pts]
        es = [100 * p[2] for p in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, color=COLORS[k % len(COLORS)],
                    linestyle="-" if len(pts) > 1 else "none")
    if baseline_error is not None:
        ax.axhline(100 * baseline_error, color="gray", linestyle="--", label="baseline (dense)")
    ax.set_xlabel("pruned parameters [%]")
    ax.set_ylabel("test top-1 error [%]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
