"""Benchmark reports: a Table-X-like terminal table, the bench JSON, a Markdown section kept in a run's report.md
(replaced on rerun), and a latency-distribution plot."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .. import _io
from .protocol import BenchResult, ModelResult

log = logging.getLogger(__name__)


def _ms(v: float | None) -> str:
    """About four significant digits without scientific notation (0.006123, 1.234, 204.2)."""
    if v is None:
        return "-"
    decimals = 1 if v >= 100 else 2 if v >= 10 else 3 if v >= 1 else 4 if v >= 0.1 else 6
    return f"{v:.{decimals}f}"


def _mean_std(m: ModelResult) -> str:
    s = m.stats
    return "-" if s.get("mean_ms") is None else f"{_ms(s['mean_ms'])} ± {_ms(s['std_ms'])}"


def _speedup_text(m: ModelResult) -> str:
    if m.role == "baseline":
        return "1.00× (baseline)"
    if m.speedup is None:
        return "-"
    lo, hi = m.speedup["ci95"]["median"]
    return f"{m.speedup['median']:.2f}× [{lo:.2f}, {hi:.2f}]"


def _interval_words(sp: dict) -> str:
    """How the interval was made, in a few words for captions: its unit and how many units."""
    if sp.get("interval_unit") == "block":
        return f"paired block bootstrap over {sp['block_pairs']} block pairs"
    return "bootstrap over single runs, NO block structure: too narrow under drift"


def _title(result: BenchResult) -> str:
    d = result.device
    threads = f"{result.threads} thread" + ("" if result.threads == 1 else "s")
    where = d.get("model") or d.get("cpu_model") or d.get("kind", "?")  # a phone's model name, else the CPU's
    text = (f"Inference latency on {where} ({d.get('kind', 'cpu')}), {result.runtime}, {threads}, "
            f"batch {result.batch_size}")
    if result.interrupted:
        text += " — INTERRUPTED, partial samples"
    thermal = d.get("thermal") or {}
    if thermal.get("throttled"):
        text += " — THROTTLED (see the thermal notes)"
    elif thermal.get("flags"):
        text += " — thermal notes below"
    return text


COLUMNS = ("model", "runtime", "runs", "mean ± std [ms]", "median", "p90", "p99", "speedup (median, 95% CI)")


def table_rows(result: BenchResult) -> list[list[str]]:
    return [[m.label, m.runtime, str(len(m.samples_ms)), _mean_std(m), _ms(m.stats.get("median_ms")),
             _ms(m.stats.get("p90_ms")), _ms(m.stats.get("p99_ms")), _speedup_text(m)] for m in result.models]


def render_table(result: BenchResult):
    """A rich Table in the layout of SeReNe Table X (inference time mean ± std), plus median, tails and speedup."""
    from rich.table import Table

    t = Table(title=_title(result))
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for row in table_rows(result):
        t.add_row(*row)
    if result.speedup is not None:
        sp = result.speedup
        lo, hi = sp["ci95"]["mean"]
        t.caption = (f"speedup by mean {sp['mean']:.2f}× [{lo:.2f}, {hi:.2f}] (dense ÷ slim, 95% CI: "
                     f"{_interval_words(sp)})" + (f"; fastest runs {sp['min']:.2f}×" if sp.get("min") else ""))
    return t


def markdown_section(result: BenchResult) -> str:
    """The Markdown benchmark section (a table and the machine record), without its markers."""
    d = result.device
    lines = [f"### {_title(result)}", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"]
    for row in table_rows(result):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if result.speedup is not None:
        sp = result.speedup
        lo, hi = sp["ci95"]["mean"]
        fastest = f" Fastest run vs fastest run: {sp['min']:.2f}×." if sp.get("min") else ""
        lines.append(f"Speedup by mean: {sp['mean']:.2f}× [{lo:.2f}, {hi:.2f}] (dense ÷ slim; 95 % intervals by "
                     f"{_interval_words(sp)}, {sp['resamples']} resamples).{fastest}")
        if sp.get("note"):
            lines.append(f"Interval caveat: {sp['note']}.")
        lines.append("")
    versions = ", ".join(f"{k} {v}" for k, v in (d.get("versions") or {}).items())
    warm = f"at least {result.warmup} warm-up runs" + (
        f" and {result.warmup_seconds:g} s" if result.warmup_seconds else "") + " per model discarded"
    blocks = f"blocks of {result.block_size}" if result.block_size else "blocks"
    lines.append(f"Protocol: {warm}, {result.runs} timed runs per model in one process, models alternating in "
                 f"{blocks}, fixed seeded input (seed {result.seed}).")
    thermal = d.get("thermal")
    if thermal:
        cool = thermal.get("cooldown") or {}
        src = thermal.get("thermal_source") or "none readable"
        lines.append(f"Thermal: temperatures from {src}; cool-down before each block reached idle "
                     f"{cool.get('reached', 0)}×, not reached {cool.get('not_reached', 0)}×, not checked "
                     f"{cool.get('unchecked', 0)}×; throttled: {'YES' if thermal.get('throttled') else 'no'}; "
                     f"cores {thermal.get('cores_policy') or '?'} {thermal.get('pinned_cores') or ''}".rstrip() + ".")
        for flag in thermal.get("flags") or []:
            lines.append(f"- **{flag}**")
    machine = [f"{k}: {d[k]}" for k in ("cpu_model", "cores", "usable_cores", "platform", "load_average") if k in d]
    if machine:
        lines.append("Machine: " + "; ".join(machine) + ".")
    if versions:
        lines.append(f"Versions: {versions}.")
    return "\n".join(lines) + "\n"


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"


def update_report_md(path: str | Path, section: str, key: str = "cpu") -> Path:
    """Insert ``section`` between ``<!-- bench:KEY -->`` markers in ``path``, replacing a previous one, else append."""
    path = Path(path)
    begin, end = _markers(key)
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    return _io.write_text(path, text)


def plot_latency(result: BenchResult, path: str | Path) -> Path:
    """Histograms of every model's latencies on one axis (medians marked), plus each model's samples in
    execution order, so drift and outliers are visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    series = [(m.label, np.asarray(m.samples_ms)) for m in result.models if m.samples_ms]
    if series:
        lo = min(float(np.percentile(s, 0.5)) for _, s in series)
        hi = max(float(np.percentile(s, 99.5)) for _, s in series)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 60)
        for i, (label, s) in enumerate(series):
            color = f"C{i}"
            ax_h.hist(np.clip(s, bins[0], bins[-1]), bins=bins, alpha=0.55, color=color, label=label)
            ax_h.axvline(float(np.median(s)), color=color, linestyle="--", linewidth=1)
            ax_t.plot(np.arange(s.size), s, ".", markersize=2, color=color, label=label)
    ax_h.set_xlabel("latency [ms] (0.5–99.5th percentile; dashed: median)")
    ax_h.set_ylabel("runs")
    ax_h.legend(fontsize=8)
    ax_t.set_xlabel("run (per model, execution order)")
    ax_t.set_ylabel("latency [ms]")
    ax_t.set_yscale("log")
    fig.suptitle(_title(result), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with _io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    result: BenchResult,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    report_md: str | Path | None = None,
) -> dict[str, Path]:
    """Write whichever of the bench JSON, the plot and the report.md section are asked for; return their paths."""
    written: dict[str, Path] = {}
    if json_path is not None:
        written["json"] = _io.write_json(json_path, result.to_dict())
    if plot_path is not None:
        written["plot"] = plot_latency(result, plot_path)
    if report_md is not None:
        written["report_md"] = update_report_md(report_md, markdown_section(result),
                                                key=str(result.device.get("kind", "cpu")))
    return written
