"""`edgeprune bench`: inference latency of a model (and its dense baseline) on this machine, SeReNe Table X style."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ._app import app, echo

LOCAL_DEVICES = ("cpu", "cuda")


@dataclasses.dataclass
class BenchConfig:
    model: str
    baseline: str | None = None
    device: str = "cpu"
    runtime: str = "onnxruntime"
    runs: int = 1000
    warmup: int = 50
    threads: int = 1
    batch_size: int = 1
    input_shape: tuple[int, ...] | None = None
    block_size: int = 50
    seed: int = 0
    json_path: str | None = None
    plot_path: str | None = None

    def __post_init__(self) -> None:
        from ..bench import RUNTIMES
        from ..errors import ConfigError

        if self.device == "adb":
            raise ConfigError("--device adb is not wired into this build yet; benchmark on the phone with "
                              "android_bench, or use --device cpu")
        if self.device not in LOCAL_DEVICES:
            raise ConfigError(f"unknown --device {self.device!r}; choose cpu (or cuda with --runtime torch)")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown --runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        for name in ("runs", "threads", "batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    from ..errors import ConfigError

    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers like 3,32,32, got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"--input-shape must be positive integers like 3,32,32, got {text!r}")
    return shape


def _sources(cfg: BenchConfig):
    """(sources in A/B order — dense first —, run folder or None)."""
    from ..bench import ModelSource, resolve_run_folder

    model = Path(cfg.model)
    run_dir = model if model.is_dir() else None
    if run_dir is not None:
        slim, dense = resolve_run_folder(run_dir, cfg.runtime)
    else:
        slim, dense = ModelSource(model, label=model.name), None
    if cfg.baseline:
        b = Path(cfg.baseline)
        label = b.name if b.name != slim.label else f"{b.parent.name}/{b.name}"
        dense = ModelSource(b, label=label, role="baseline")
    return ([dense, slim] if dense is not None else [slim]), run_dir


def _print_wide(table) -> None:
    """Like print_table, but piped output gets room for the eight columns instead of rich's 80."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    console.print(table)


@app.command()
def bench(
    model: str = typer.Argument(..., help="Model file (.onnx, .ort, .ptl, checkpoint .pt) or a run folder."),
    baseline: str = typer.Option(None, help="Dense model to compare with (speedup = baseline ÷ model)."),
    device: str = typer.Option("cpu", help="cpu (or cuda with --runtime torch); adb comes with android_bench."),
    runtime: str = typer.Option("onnxruntime", help="onnxruntime | torch (eager) | ptl (TorchScript lite)."),
    runs: int = typer.Option(1000, help="Timed inferences per model (SeReNe Table X: 1,000)."),
    warmup: int = typer.Option(50, help="Discarded warm-up inferences per model."),
    threads: int = typer.Option(1, help="Intra-op threads (ORT intra_op_num_threads / torch.set_num_threads)."),
    batch_size: int = typer.Option(1, help="Samples per inference."),
    input_shape: str = typer.Option(None, help="One sample's shape, e.g. 3,32,32 (default: from the model)."),
    block_size: int = typer.Option(50, help="Runs per block; dense and slim alternate block by block."),
    seed: int = typer.Option(0, help="Seed of the fixed input and of the bootstrap."),
    json_out: str = typer.Option(None, "--json", help="Write the bench JSON here."),
    plot: str = typer.Option(None, help="Write a latency-distribution plot (PNG) here."),
) -> None:
    """Time N inferences of a model (and its baseline, alternating) and report mean ± std, median, tails, speedup."""
    from ..bench import bench_models, render_table, write_outputs

    cfg = BenchConfig(model, baseline, device, runtime, runs, warmup, threads, batch_size, parse_shape(input_shape),
                      block_size, seed, json_out, plot)
    sources, run_dir = _sources(cfg)
    result = bench_models(sources, runtime=cfg.runtime, runs=cfg.runs, warmup=cfg.warmup, threads=cfg.threads,
                          batch_size=cfg.batch_size, input_shape=cfg.input_shape, block_size=cfg.block_size,
                          seed=cfg.seed, device=cfg.device)
    written = write_outputs(result, cfg.json_path, cfg.plot_path)
    if run_dir is not None:
        out = run_dir / "bench" / cfg.device
        run_plot = out / "latency.png" if cfg.plot_path is None else None
        run_written = write_outputs(result, out / "bench.json", run_plot, run_dir / "report.md")
        written.update({f"run {k}": v for k, v in run_written.items()})
    _print_wide(render_table(result))
    for what, path in written.items():
        echo(f"{what}: {path}")
    if result.interrupted:
        echo("interrupted: statistics cover the runs measured before Ctrl-C")
        raise SystemExit(130)
