"""`edgeprune profile`: the latency table of a model on the target device (what each neuron group's width costs)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, echo, parse_shape, print_table


@app.command()
def profile(
    model: Path = typer.Argument(..., help="Trained checkpoint (.pt): the dense model compress starts from."),
    out: Path = typer.Option(..., "--out", help="Latency table (JSON) to write."),
    device: str = typer.Option("cpu", help="cpu (ONNX Runtime here) or adb (a phone over ADB)."),
    serial: str = typer.Option(None, help="adb: the phone, HOST:PORT or a USB serial (default: the only one)."),
    round_channels: int = typer.Option(None, help="Measure widths rounded up to multiples of N, as "
                                                  "`compress --round-channels N` will cut them."),
    fractions: str = typer.Option("0.75,0.5,0.25", help="Narrower widths measured per group, as fractions of it."),
    runs: int = typer.Option(200, help="Timed inferences per variant (all variants alternate in blocks)."),
    warmup: int = typer.Option(20, help="Discarded warm-up inferences per variant."),
    warmup_seconds: float = typer.Option(0.2, help="Least warm-up time per variant (locally)."),
    threads: int = typer.Option(None, help="Intra-op threads (default: 1 locally, one per big core on a phone)."),
    input_shape: str = typer.Option(None, help="One sample's shape, e.g. 1,28,28 (default: from the checkpoint)."),
    runner: str = typer.Option("ort-c", help="adb: ort-c (bundled ONNX Runtime runner) or python-ort."),
    cores: str = typer.Option(None, help="adb: big (default), prime, all, or a hex CPU mask."),
    cooldown_seconds: float = typer.Option(60.0, help="adb: longest wait for temperatures to return to idle."),
    auth_timeout: float = typer.Option(30.0, help="adb: seconds to wait for 'Allow USB debugging'."),
    seed: int = typer.Option(0, help="Seed of the fixed input."),
) -> None:
    """Measure how each prunable neuron group's width changes the model's latency on a device; write the table."""
    from .._progress import progress_enabled
    from ..checkpoint import load_checkpoint
    from ..errors import ConfigError
    from ..latency import profile_model

    if round_channels is not None and round_channels < 1:
        raise ConfigError(f"--round-channels must be a positive integer, got {round_channels}")
    if device != "adb" and (serial or cores):
        raise ConfigError("--serial and --cores apply to --device adb only")
    try:
        fr = tuple(float(v) for v in fractions.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--fractions must be comma-separated numbers in (0, 1), got {fractions!r}") from None
    if not fr or any(not 0 < f < 1 for f in fr):
        raise ConfigError(f"--fractions must be numbers in (0, 1), e.g. 0.75,0.5,0.25; got {fractions!r}")
    loaded = load_checkpoint(model)
    shape = parse_shape(input_shape) or loaded.meta.get("input_shape")
    if not shape:
        raise ConfigError(f"{model} does not record its input shape; pass --input-shape C,H,W")
    table = profile_model(loaded.model, tuple(shape), device=device, fractions=fr, round_channels=round_channels,
                          runs=runs, warmup=warmup, warmup_seconds=warmup_seconds, threads=threads, seed=seed,
                          serial=serial, runner=runner, cores=cores, cooldown_seconds=cooldown_seconds,
                          auth_timeout=auth_timeout, partial_path=Path(out).with_suffix(".raw.json"),
                          checkpoint=model, progress=progress_enabled())
    table.save(out)
    from rich.table import Table

    dev = table.device
    where = dev.get("model") or dev.get("cpu") or dev.get("cpu_model") or device
    t = Table(title=f"latency table of {model.name} on {where}: dense {table.baseline_ms:.4f} ms")
    for col in ("group (root)", "size", "widths", "Δ latency (ms)", "ms per neuron"):
        t.add_column(col, justify="left" if col == "group (root)" else "right")
    for g in table.groups:
        t.add_row(g.root, str(g.size), " ".join(map(str, g.widths)), " ".join(f"{d:+.4f}" for d in g.delta_ms),
                  f"{g.mean_slope():.2e}")
    print_table(t)
    echo(f"profiled {len(table.groups)} groups ({sum(len(g.widths) - 1 for g in table.groups)} variants, "
         f"{runs} runs each) in {table.seconds:.0f} s; wrote {out}")
