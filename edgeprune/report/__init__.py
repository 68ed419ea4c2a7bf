"""The paper-style report of a run: report.json, report.md (SeReNe's table layout) and plots/*.png.

``write_report(run_dir)`` reads the run folder the compress pipeline writes (manifest.json, baseline.pt, masked.pt,
optional model.pt, exported artifacts, metrics.jsonl, bench/<device>/*.json) and regenerates all three.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .. import _io
from .build import build_report
from .markdown import neurons_string, render_layers_table, render_markdown, render_markdown_table

log = logging.getLogger(__name__)

_BENCH_BLOCK = re.compile(r"<!-- bench:(?P<key>[^ ]+) -->.*?<!-- /bench:(?P=key) -->\n?", re.S)


def write_report(run_dir: str | Path, plots: bool = True) -> dict:
    """Write ``report.json``, ``report.md`` and ``plots/{neurons,fc1_mask,remaining_params}.png`` into ``run_dir``
    (atomically) and return the report dict. Sections ``edgeprune bench`` added to report.md are kept."""
    from ..checkpoint import load_checkpoint

    run = Path(run_dir)
    report = build_report(run)
    written: list[str] = []
    if plots:
        from .plots import plot_fc_mask, plot_neurons, plot_remaining

        plot_dir = run / "plots"
        plot_neurons(report, plot_dir / "neurons.png")
        written.append("plots/neurons.png")
        masked = load_checkpoint(run / "masked.pt").model
        if plot_fc_mask(masked, plot_dir / "fc1_mask.png") is not None:
            written.append("plots/fc1_mask.png")
        plot_remaining(report, plot_dir / "remaining_params.png")
        written.append("plots/remaining_params.png")
    report["plots"] = written
    md_path = run / "report.md"
    previous = md_path.read_text(encoding="utf-8") if md_path.exists() else ""
    bench_blocks = [m.group(0).rstrip("\n") for m in _BENCH_BLOCK.finditer(previous)]
    text = render_markdown(report, written)
    if bench_blocks:
        text = text.rstrip("\n") + "\n\n" + "\n\n".join(bench_blocks) + "\n"
    _io.write_json(run / "report.json", report)
    _io.write_text(md_path, text)
    log.info("report: %s (compression %.2fx)", md_path, report["compression_ratio"])
    return report


__all__ = ["build_report", "neurons_string", "render_layers_table", "render_markdown", "render_markdown_table",
           "write_report"]
