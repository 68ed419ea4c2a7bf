"""`edgeprune surgery`: cut a masked checkpoint into a slim dense one, verified against the masked model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import app, echo, print_table


def _real_batch(dataset: str, data_dir: Path | None, samples: int, masked: Path | None = None):
    from ..data import load_dataset

    options = None
    if masked is not None and Path(masked).is_file():
        import torch

        try:  # the image options the model was trained with (size, channels, normalization)
            options = torch.load(masked, map_location="cpu", weights_only=True).get("meta", {}).get("data_options")
        except Exception:  # unreadable here: surgery_checkpoint reports it properly
            options = None
    bundle = load_dataset(dataset, data_dir=data_dir, options=options)
    return bundle.val.x[:samples]


@app.command()
def surgery(
    masked: Path = typer.Argument(..., help="Masked checkpoint (.pt) whose pruned neurons are exactly zero."),
    out: Path = typer.Option(..., "--out", help="Slim checkpoint to write."),
    round_channels: int = typer.Option(None, "--round-channels",
                                       help="Keep a few dead channels so widths are multiples of N (e.g. 8)."),
    tolerance: float = typer.Option(1e-5, help="Max |slim - masked| allowed, relative to max |output|."),
    dataset: str = typer.Option(None, help="Add a real validation batch from this dataset to probe and check."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
) -> None:
    """Remove dead neurons and filters; print per-layer neurons, params and MACs before → after."""
    from ..surgery import SurgeryConfig, surgery_checkpoint

    config = SurgeryConfig(round_channels=round_channels, tolerance=tolerance)
    batch = _real_batch(dataset, data_dir, config.probe_samples, masked) if dataset else None
    result = surgery_checkpoint(masked, out, round_channels=config.round_channels, probe_batch=batch,
                                tolerance=config.tolerance)
    report = result.report
    if as_json:
        echo(json.dumps({"out": str(out), **report}, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"surgery {masked} → {out}")
    for col in ("layer", "type", "neurons", "params", "MACs"):
        t.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in report["layers"]:
        t.add_row(r["name"], r["kind"], f"{r['neurons_before']} → {r['neurons_after']}",
                  f"{r['params_before']:,} → {r['params_after']:,}", f"{r['macs_before']:,} → {r['macs_after']:,}")
    t.add_row("total", "", f"{sum(report['neurons_before'])} → {sum(report['neurons_after'])}",
              f"{report['params_before']:,} → {report['params_after']:,}",
              f"{report['macs_before']:,} → {report['macs_after']:,}", end_section=True)
    print_table(t)
    v = report["verification"]
    echo(f"verification: max |Δ| {v['max_abs_diff']:.3g} ({v['relative_diff']:.2g} of max |output| "
         f"{v['output_scale']:.3g}; tolerance {v['tolerance']:g})")
    if report.get("partial"):
        p = report["partial"]
        echo(f"torch-pruning cannot cut the whole model ({p['reason']}): cut inside {len(p['parts_cut'])} parts, "
             f"{len(p['split'])} modules split, {len(p['kept_dense'])} kept dense; see --json")
    if report["kept"]:
        echo(f"{len(report['kept'])} dead-looking channels kept (e.g. {report['kept'][0]['layer']}: "
             f"{report['kept'][0]['reason']}); see --json")
    echo(f"saved {out} ({report['params_before'] / max(report['params_after'], 1):.2f}x fewer parameters, "
         f"{report['seconds']:.1f} s)")
