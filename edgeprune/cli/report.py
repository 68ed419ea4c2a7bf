"""`edgeprune report`: regenerate report.json, report.md and plots/*.png of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import app, echo


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder (manifest.json, baseline.pt, masked.pt, …)."),
    plots: bool = typer.Option(True, help="Draw plots/*.png (matplotlib)."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of the table."),
) -> None:
    """Write the paper-style report of a compress run: table (JSON + Markdown) and plots."""
    from ..report import render_markdown_table, write_report

    result = write_report(run, plots=plots)
    if as_json:
        echo(json.dumps(result, indent=2))
        return
    echo(render_markdown_table(result))
    echo()
    echo(f"wrote {Path(run) / 'report.json'}, {Path(run) / 'report.md'}"
         + (f" and {len(result.get('plots', []))} plot(s) in {Path(run) / 'plots'}" if result.get("plots") else ""))
