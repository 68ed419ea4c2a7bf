"""`edgeprune analyze entropy | sharpness | landscape`: what a pruned model learned (pruning-minima paper)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import analyze_app, echo, print_table


def _labels(value: str | None, count: int):
    from ..errors import ConfigError

    if value is None:
        return None
    parts = [v.strip() for v in value.split(",")]
    if len(parts) != count or not all(parts):
        raise ConfigError(f"--labels needs {count} comma-separated names, got {value!r}")
    return tuple(parts)


@analyze_app.command()
def entropy(
    model: Path = typer.Argument(..., help="Checkpoint (or run folder: its masked.pt)."),
    compare: Path = typer.Option(None, help="A second model to overlay (e.g. gradual vs one-shot)."),
    dataset: str = typer.Option(None, help="Dataset (default: the one recorded in the checkpoint)."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    split: str = typer.Option("train", help="train or test."),
    samples: int = typer.Option(10000, help="Inputs used (fixed random subset of the split); 0 for all."),
    batch_size: int = typer.Option(256),
    second_order: bool = typer.Option(False, help="Also the pairwise (second-order) PSP-entropy."),
    pairs: int = typer.Option(None, help="Sampled pairs per layer (default: all pairs up to 1024 neurons)."),
    conv_mode: str = typer.Option("filter", help="filter: one neuron per channel, positions are observations; "
                                                 "unit: one neuron per (channel, position)."),
    labels: str = typer.Option(None, help="Names for the model(s) in figures, comma-separated."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: Path = typer.Option(..., help="Folder for entropy.json, entropy.npz and PNG histograms."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """First- and second-order PSP-entropy per neuron and pair, and mean squared PSP per layer (paper eqs 4-5)."""
    from ..analysis.reports import EntropyConfig, analyze_entropy

    config = EntropyConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, split=split,
                           samples=samples or None, batch_size=batch_size, second_order=second_order, pairs=pairs,
                           conv_mode=conv_mode, seed=seed, device=device)
    report = analyze_entropy(model, config, out, compare=compare, labels=_labels(labels, 2 if compare else 1))
    if as_json:
        echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"PSP-entropy [bits] on {report['samples']} {report['split']} samples of {report['dataset']}")
    for col in ("model", "layer", "neurons", "H1 mean", "H1 median", "always off", "H2 mean", "mean z²"):
        t.add_column(col, justify="left" if col in ("model", "layer") else "right")
    for m in report["models"]:
        for row in m["layers"]:
            h2 = f"{row['h2']['mean']:.3f}" if "h2" in row else "-"
            layer = f"{row['producer']} (ReLU {row['name']})" if row.get("producer") else row["name"]
            t.add_row(m["label"], layer, str(row["neurons"]), f"{row['h1']['mean']:.3f}",
                      f"{row['h1'].get('median', float('nan')):.3f}", str(row["always_off"]), h2,
                      f"{row['psp_sq_mean']:.4g}")
    print_table(t)
    echo("wrote " + ", ".join(report["files"].values()))


@analyze_app.command()
def sharpness(
    model: Path = typer.Argument(..., help="Checkpoint (or run folder: its masked.pt)."),
    dataset: str = typer.Option(None, help="Dataset (default: the one recorded in the checkpoint)."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    top: int = typer.Option(5, help="How many of the largest eigenvalues."),
    batches: int = typer.Option(4, help="Training batches the loss is averaged over (fixed random samples)."),
    batch_size: int = typer.Option(256),
    method: str = typer.Option("lanczos", help="lanczos (largest algebraic) or power (largest magnitude)."),
    iters: int = typer.Option(None, help="Lanczos steps / power iterations (default 30+ / 100)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: Path = typer.Option(None, help="Also write the result to this JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Top Hessian eigenvalues of the training loss over the surviving (nonzero) parameters."""
    from .. import _io
    from ..analysis.reports import SharpnessConfig, analyze_sharpness

    config = SharpnessConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, top=top,
                             batches=batches, batch_size=batch_size, method=method, iters=iters, seed=seed,
                             device=device)
    result = analyze_sharpness(model, config)
    if out is not None:
        _io.write_json(out, result)
    if as_json:
        echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"top Hessian eigenvalues ({result['method']}, {result['samples']} training samples, "
                    f"{result['parameters_surviving']:,} surviving parameters)")
    t.add_column("k", justify="right")
    t.add_column("eigenvalue", justify="right")
    t.add_column("residual", justify="right")
    for i, (v, r) in enumerate(zip(result["eigenvalues"], result["residuals"])):
        t.add_row(str(i + 1), f"{v:.6g}", f"{r:.2g}")
    print_table(t)


@analyze_app.command()
def landscape(
    a: Path = typer.Argument(..., help="First solution (checkpoint or run folder)."),
    b: Path = typer.Argument(..., help="Second solution, same architecture."),
    dataset: str = typer.Option(None, help="Dataset (default: the one recorded in A)."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    grid: int = typer.Option(8, help="Grid steps between A and B (resolution of both axes)."),
    margin: float = typer.Option(0.5, help="How far beyond A and B the α axis extends (in units of ‖B−A‖)."),
    beta_range: float = typer.Option(1.0, help="β axis extent (in units of ‖B−A‖)."),
    samples: int = typer.Option(2048, help="Training samples the loss is computed on."),
    batch_size: int = typer.Option(512),
    support: str = typer.Option("dense", help="dense, or union: random direction only on entries nonzero in A or B."),
    labels: str = typer.Option(None, help="Names of A and B in the figure, comma-separated."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: Path = typer.Option(Path("landscape"), help="Folder for landscape.json and landscape.png."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Training loss on the plane through A, B and a random filter-normalized direction orthogonal to B − A."""
    from ..analysis.reports import LandscapeConfig, analyze_landscape

    config = LandscapeConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, grid=grid,
                             margin=margin, beta_range=beta_range, samples=samples, batch_size=batch_size,
                             support=support, seed=seed, device=device)
    report = analyze_landscape(a, b, config, out, labels=_labels(labels, 2))
    if as_json:
        echo(json.dumps(report, indent=2))
        return
    flat = [v for row in report["loss"] for v in row]
    echo(f"loss at {report['labels'][0]}: {report['loss_a']:.4g}, at {report['labels'][1]}: {report['loss_b']:.4g}, "
         f"grid min {min(flat):.4g}, max {max(flat):.4g} ({len(report['alphas'])}×{len(report['betas'])} points, "
         f"‖B−A‖ = {report['distance']:.4g})")
    echo(f"wrote {report['files']['png']}, {report['files']['json']}")
