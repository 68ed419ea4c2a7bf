"""`edgeprune oneshot`: prune a trained baseline by global magnitude in one shot, then fine-tune, rewind, re-init or
draw a random structure, and retrain with the mask pinned."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import app, echo, print_table


@app.command()
def oneshot(
    model: Path = typer.Argument(..., help="Trained baseline checkpoint (from `edgeprune train`)."),
    mode: str = typer.Option("finetune", help="finetune, rewind (lottery ticket), reinit or random-structure."),
    sparsity: float = typer.Option(None, help="Fraction of conv/linear parameters to prune, e.g. 0.9."),
    match: str = typer.Option(None, help="Gradual run folder (its masked.pt) or checkpoint whose sparsity to match."),
    match_mask: bool = typer.Option(False, help="With --match: reuse that model's mask instead of magnitude pruning."),
    seeds: int = typer.Option(1, help="Runs with seeds seed..seed+K-1 (new inits / structures / data orders)."),
    epochs: int = typer.Option(2, help="Training epochs after pruning (0: prune only)."),
    lr: float = typer.Option(None, help="SGD learning rate (default 0.01 for finetune, else 0.05), cosine-annealed."),
    batch_size: int = typer.Option(128),
    momentum: float = typer.Option(0.9),
    weight_decay: float = typer.Option(5e-4),
    train_subset: int = typer.Option(None, help="Train on this many random training samples only."),
    dataset: str = typer.Option(None, help="Dataset (default: the one recorded in the checkpoint)."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    out: Path = typer.Option(..., help="Folder for <mode>-seed<k>.pt checkpoints and oneshot-<mode>.json."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One-shot pruning controls of the pruning-minima paper (Sec. 5); checkpoints carry top1_error and sparsity."""
    from ..analysis.oneshot import OneShotConfig
    from ..analysis.oneshot import oneshot as run_oneshot

    config = OneShotConfig(mode=mode, sparsity=sparsity, match=match, match_mask=match_mask, seeds=seeds,
                           epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                           weight_decay=weight_decay, train_subset=train_subset, dataset=dataset,
                           data_dir=str(data_dir) if data_dir else None, device=device, seed=seed)
    summary = run_oneshot(model, config, out)
    if as_json:
        echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    base_err = summary["baseline_top1_error"]
    t = Table(title=f"one-shot {summary['mode']} at {summary['target_sparsity']:.2%} pruned"
                    + (f" (baseline error {base_err:.2%})" if base_err is not None else ""))
    for col in ("checkpoint", "seed", "pruned", "compression", "top-1 error"):
        t.add_column(col, justify="left" if col == "checkpoint" else "right")
    for r in summary["runs"]:
        t.add_row(r["path"], str(r["seed"]), f"{r['sparsity']:.2%}", f"{r['compression_ratio']:.1f}×",
                  f"{r['top1_error']:.2%}")
    print_table(t)
