"""`edgeprune bench`: inference latency of a model (and its dense baseline) on this machine, SeReNe Table X style."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ._app import app, echo, parse_shape

LOCAL_DEVICES = ("cpu", "cuda")
DEVICES = LOCAL_DEVICES + ("adb",)


@dataclasses.dataclass
class BenchConfig:
    model: str
    baseline: str | None = None
    device: str = "cpu"
    runtime: str = "onnxruntime"
    runs: int = 1000
    warmup: int = 50
    threads: int | None = None
    """None: 1 thread locally; on a phone one thread per pinned big core."""
    batch_size: int = 1
    input_shape: tuple[int, ...] | None = None
    block_size: int | None = None
    """None: runs / 20 rounded up, so each model gets 20 alternating blocks."""
    seed: int = 0
    json_path: str | None = None
    plot_path: str | None = None
    serial: str | None = None
    runner: str = "ort-c"
    cores: str | None = None
    cooldown_seconds: float = 60.0
    keep: bool = False
    auth_timeout: float = 30.0
    warmup_seconds: float = 1.0

    def __post_init__(self) -> None:
        from ..bench import RUNTIMES
        from ..errors import ConfigError

        if self.device not in DEVICES:
            raise ConfigError(f"unknown --device {self.device!r}; choose cpu, adb (a phone), or cuda with --runtime torch")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown --runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if self.device != "adb" and (self.serial or self.cores or self.keep):
            raise ConfigError("--serial, --cores and --keep apply to --device adb only")
        if self.threads is None and self.device != "adb":
            self.threads = 1
        if self.cooldown_seconds < 0:
            raise ConfigError(f"--cooldown-seconds must be 0 or more, got {self.cooldown_seconds}")
        if self.cores is not None and self.cores.lower() not in ("big", "prime", "all"):
            try:
                if int(self.cores, 16) <= 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"--cores must be big, prime, all or a hexadecimal CPU mask like f0 (cores 4-7), "
                                  f"got {self.cores!r}") from None
        for name in ("runs", "threads", "batch_size", "block_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.warmup_seconds >= 0:
            raise ConfigError(f"--warmup-seconds must be 0 or more, got {self.warmup_seconds}")


def _sources(cfg: BenchConfig):
    """(sources in A/B order — dense first —, run folder or None)."""
    from ..bench import ModelSource, int8_source, resolve_run_folder

    model = Path(cfg.model)
    run_dir = model if model.is_dir() else None
    int8 = None
    if run_dir is not None:
        slim, dense = resolve_run_folder(run_dir, cfg.runtime)
        int8 = int8_source(run_dir, cfg.runtime)  # dense float, slim float and slim INT8 in one alternating run
    else:
        slim, dense = ModelSource(model, label=model.name), None
    if cfg.baseline:
        b = Path(cfg.baseline)
        label = b.name if b.name != slim.label else f"{b.parent.name}/{b.name}"
        dense = ModelSource(b, label=label, role="baseline")
    models = [slim] + ([int8] if int8 is not None else [])
    return ([dense] + models if dense is not None else models), run_dir


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
    device: str = typer.Option("cpu", help="cpu, adb (a phone over ADB), or cuda with --runtime torch."),
    runtime: str = typer.Option("onnxruntime", help="onnxruntime | torch (eager) | ptl (TorchScript lite)."),
    runs: int = typer.Option(1000, help="Timed inferences per model (SeReNe Table X: 1,000)."),
    warmup: int = typer.Option(50, help="Discarded warm-up inferences per model."),
    threads: int = typer.Option(None, help="Intra-op threads (default: 1 locally, one per big core on a phone)."),
    batch_size: int = typer.Option(1, help="Samples per inference."),
    input_shape: str = typer.Option(None, help="One sample's shape, e.g. 3,32,32 (default: from the model)."),
    block_size: int = typer.Option(None, help="Runs per block; dense and slim alternate block by block "
                                              "(default: --runs / 20, i.e. 20 blocks per model)."),
    seed: int = typer.Option(0, help="Seed of the fixed input and of the bootstrap."),
    json_out: str = typer.Option(None, "--json", help="Write the bench JSON here."),
    plot: str = typer.Option(None, help="Write a latency-distribution plot (PNG) here."),
    serial: str = typer.Option(None, help="adb: the phone, HOST:PORT over Wi-Fi or a USB serial (default: the only one)."),
    runner: str = typer.Option("ort-c", help="adb: ort-c (bundled ONNX Runtime runner), python-ort, perf_test:PATH, "
                                            "torch_speed_benchmark:PATH, executorch:PATH."),
    cores: str = typer.Option(None, help="adb: big (default: all but the slowest cluster), prime (fastest cluster), "
                              "all, or a hex CPU mask."),
    cooldown_seconds: float = typer.Option(60.0, help="adb: longest wait for temperatures to return to idle."),
    keep: bool = typer.Option(False, help="adb: leave the pushed runner and models on the phone."),
    auth_timeout: float = typer.Option(30.0, help="adb: seconds to wait for 'Allow USB debugging' on the phone."),
    warmup_seconds: float = typer.Option(1.0, help="Least warm-up time per model: warm-up lasts until both --warmup "
                                                   "runs and this many seconds are done."),
) -> None:
    """Time N inferences of a model (and its baseline, alternating) and report mean ± std, median, tails, speedup.

    Given a run folder, the dense baseline and the slim model are timed; when the folder also holds an INT8 model
    (model.int8.onnx / .ort, from `export --quantize int8` or `compress --quantize int8`) it is timed too, as a
    third model in the same alternating run. To leave it out, give the slim model's file instead of the folder
    (e.g. RUN/model.onnx with --baseline RUN/baseline.onnx). Only --runtime onnxruntime times the INT8 model.
    """
    from ..bench import bench_models, render_table, write_outputs

    cfg = BenchConfig(model, baseline, device, runtime, runs, warmup, threads, batch_size, parse_shape(input_shape),
                      block_size, seed, json_out, plot, serial, runner, cores, cooldown_seconds, keep, auth_timeout,
                      warmup_seconds=warmup_seconds)
    sources, run_dir = _sources(cfg)
    if cfg.device == "adb":
        result = _bench_adb(cfg, sources, run_dir)
    else:
        result = bench_models(sources, runtime=cfg.runtime, runs=cfg.runs, warmup=cfg.warmup, threads=cfg.threads,
                              batch_size=cfg.batch_size, input_shape=cfg.input_shape, block_size=cfg.block_size,
                              seed=cfg.seed, device=cfg.device, warmup_seconds=cfg.warmup_seconds)
    written = write_outputs(result, cfg.json_path, cfg.plot_path)
    if run_dir is not None:
        out = run_dir / "bench" / cfg.device
        run_plot = out / "latency.png" if cfg.plot_path is None else None
        run_written = write_outputs(result, out / "bench.json", run_plot, run_dir / "report.md")
        written.update({f"run {k}": v for k, v in run_written.items()})
    _print_wide(render_table(result))
    for what, path in written.items():
        echo(f"{what}: {path}")
    if run_dir is not None:
        _check_prediction(run_dir, result, cfg.device)
    if result.interrupted:
        echo("interrupted: statistics cover the runs measured before Ctrl-C")
        raise SystemExit(130)


def _check_prediction(run_dir: Path, result, device: str) -> None:
    """A run compressed with a latency table of this device kind: its predicted latency next to this measurement,
    recorded in compress.json (``latency.bench[device]``)."""
    import json

    from .. import _io

    path = run_dir / "compress.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    lat = summary.get("latency")
    slim = next((m for m in result.models if m.role != "baseline"), None)
    if not lat or lat.get("device") != device or slim is None or not slim.samples_ms:
        return
    measured = slim.stats["median_ms"]
    check = {"predicted_ms": lat["predicted_ms"], "measured_ms": measured,
             "error": lat["predicted_ms"] / measured - 1.0}
    if result.speedup is not None:
        check.update(predicted_speedup=lat["predicted_speedup"], measured_speedup=result.speedup["median"],
                     error_scaled=result.speedup["median"] / lat["predicted_speedup"] - 1.0)
    lat.setdefault("bench", {})[device] = check
    _io.write_json(path, summary)
    echo(f"latency table prediction: {lat['predicted_ms']:.4f} ms, measured {measured:.4f} ms "
         f"({100 * check['error']:+.1f} %)" + (f"; speedup predicted {lat['predicted_speedup']:.2f}x, measured "
                                               f"{result.speedup['median']:.2f}x" if result.speedup else ""))


def _phone_file(src, tmp: Path, batch_size: int) -> Path:
    """The file a phone runner loads for one source: .onnx / .ort / .ptl as given, a checkpoint exported to ONNX."""
    from ..bench.runtimes import export_onnx_for_bench
    from ..checkpoint import load_checkpoint
    from ..errors import BenchError

    p = Path(src.path)
    if not p.is_file():
        raise BenchError(f"{p}: no such file")
    if p.suffix in (".onnx", ".ort", ".ptl", ".pte"):
        return p
    if p.suffix == ".pt":
        loaded = load_checkpoint(p)
        shape = src.input_shape or loaded.meta.get("input_shape")
        if not shape:
            raise BenchError(f"{p} does not record its input shape; pass --input-shape C,H,W")
        return export_onnx_for_bench(loaded.model, tuple(shape), tmp / f"{src.role}-{p.stem}.onnx", batch_size)
    raise BenchError(f"{p}: unsupported model format {p.suffix or '(none)'}; give .onnx, .ort, .ptl or a checkpoint .pt")


def _bench_adb(cfg: BenchConfig, sources, run_dir: Path | None):
    """Run the sources on a phone through android_bench and adapt its raw record into a BenchResult."""
    import tempfile

    from .._progress import progress_enabled
    from ..bench import result_from_android
    from ..errors import BenchError

    try:
        import android_bench
        from android_bench.errors import AndroidBenchError
    except ImportError as exc:  # pragma: no cover - shipped with edgeprune
        raise BenchError(f"android_bench is not importable ({exc}); reinstall edgeprune") from None
    if run_dir is not None:
        partial = run_dir / "bench" / "adb" / "raw.json"
    elif cfg.json_path:
        partial = Path(cfg.json_path).with_suffix(".raw.json")
    else:
        partial = Path("bench-adb.raw.json")
    with tempfile.TemporaryDirectory(prefix="edgeprune-adb-") as tmp:
        baseline = next((_phone_file(s, Path(tmp), cfg.batch_size) for s in sources if s.role == "baseline"), None)
        models = [_phone_file(s, Path(tmp), cfg.batch_size) for s in sources if s.role != "baseline"]
        shape = (cfg.batch_size, *cfg.input_shape) if cfg.input_shape else None
        try:
            record = android_bench.run_benchmark(
                models, cfg.serial, runner=cfg.runner, runs=cfg.runs, warmup=cfg.warmup,
                threads=cfg.threads, cores=cfg.cores, cooldown_seconds=cfg.cooldown_seconds, keep=cfg.keep,
                partial_path=partial, progress=progress_enabled(), baseline=baseline, input_shape=shape,
                auth_timeout_s=cfg.auth_timeout,
            )
        except AndroidBenchError as exc:
            raise BenchError(str(exc)) from None
    result = result_from_android(record, seed=cfg.seed)
    from android_bench.bench import thermal_summary

    result.device["thermal"] = thermal_summary(record)  # throttling, cool-down, frequency traces → bench.json
    for flag in result.device["thermal"]["flags"]:
        echo(f"warning: {flag}")
    return result


@app.command()
def devices(
    serial: str = typer.Argument(None, help="Describe this device (HOST:PORT or USB serial) instead of listing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the phones adb can see, or describe one (model, Android version, ABI, cores, frequencies, thermals)."""
    import json

    from ..errors import BenchError

    try:
        import android_bench
        from android_bench.errors import AndroidBenchError
    except ImportError as exc:  # pragma: no cover
        raise BenchError(f"android_bench is not importable ({exc}); reinstall edgeprune") from None
    try:
        data = android_bench.describe_device(serial) if serial else android_bench.list_devices()
    except AndroidBenchError as exc:
        raise BenchError(str(exc)) from None
    if as_json or serial:
        echo(json.dumps(data, indent=2, default=str))
        return
    if not data:
        echo("no devices: connect a phone with USB debugging enabled, or `adb connect PHONE_IP:5555`")
        return
    for d in data:
        echo("  ".join(f"{k}={v}" for k, v in d.items()))
