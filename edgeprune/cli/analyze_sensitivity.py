"""`edgeprune analyze sensitivity`: exact vs LB vs UB neuron sensitivity populations (SeReNe Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import analyze_app, echo, print_table


@analyze_app.command("sensitivity")
def sensitivity_cmd(
    model: Path = typer.Argument(..., help="Trained checkpoint."),
    dataset: str = typer.Option(None, help="Dataset (default: the one recorded in the checkpoint)."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    out: Path = typer.Option(Path("sensitivity.png"), help="PNG to write."),
    batches: int = typer.Option(10, min=1, help="Test batches to average over."),
    batch_size: int = typer.Option(100, min=1),
    device: str = typer.Option("auto"),
    json_out: bool = typer.Option(False, "--json", help="Print per-method, per-layer-type statistics as JSON."),
) -> None:
    """Histogram of SeReNe (exact), (LB) and (UB) sensitivities per layer type on a trained model."""
    from ..checkpoint import load_checkpoint
    from ..data import Batches, load_dataset
    from ..errors import ConfigError
    from ..regularize.histogram import plot_populations, sensitivity_populations
    from ..train import resolve_device

    loaded = load_checkpoint(model)
    name = dataset or loaded.meta.get("dataset")
    if not name:
        raise ConfigError(f"{model} does not record its dataset; pass --dataset NAME")
    data = load_dataset(name, str(data_dir) if data_dir else None, options=loaded.meta.get("data_options"))
    pops = sensitivity_populations(loaded.model, Batches(data.test, batch_size), batches, resolve_device(device))
    plot_populations(pops, out, title=f"{Path(model).name} on {name}")
    stats = {m: {k: {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "neurons": int(v.size)}
                 for k, v in kinds.items()} for m, kinds in pops.items()}
    if json_out:
        import json

        echo(json.dumps({"png": str(out), "stats": stats}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"neuron sensitivity ({batches} batches of {batch_size})")
    for col in ("method", "layers", "neurons", "mean", "min", "max"):
        table.add_column(col, justify="right" if col not in ("method", "layers") else "left")
    for m, kinds in stats.items():
        for k, s in kinds.items():
            table.add_row(m, k, str(s["neurons"]), f"{s['mean']:.3g}", f"{s['min']:.3g}", f"{s['max']:.3g}")
    print_table(table)
    echo(f"wrote {out}")
