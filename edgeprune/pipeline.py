"""The one place that knows the stage order of `edgeprune compress`.

Each stage is a function ``stage(ctx: RunContext) -> None`` that reads what earlier stages left in the context and
writes its files into the run folder. Stages run in the order of :data:`STAGES`; a later stage (surgery → export →
report → bench) is one more entry in that list.

Run folder::

    manifest.json   versions, config, environment, stages
    metrics.jsonl   one row per epoch and per threshold step
    state.pt        resume state (loop state after every epoch / threshold step)
    baseline.pt     the input model (+ meta: test top1_error evaluated here)
    masked.pt       SeReNe's result: same architecture, pruned parameters zero (+ meta)
    compress.json   baseline vs pruned: params, neurons per layer, MACs, top-1 error, compression ratio
    model.pt        the slim model: dead neurons and filters physically removed (surgery), verified against masked.pt
    baseline.*, model.*   exports (.onnx, .7z, .ptl, .ort), each validated against its PyTorch model
    model.int8.*    with --quantize int8: the INT8 slim model (.onnx, .ort, .7z) and its record (.json: gate verdict)
    report.json, report.md, plots/   the paper-style report
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import _io
from .errors import CheckpointError, ConfigError
from .regularize.config import RESUMABLE_FIELDS, CompressConfig

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
STATE = "state.pt"
BASELINE = "baseline.pt"
MASKED = "masked.pt"
SUMMARY = "compress.json"
SLIM = "model.pt"


EXPORT_FORMATS = ("onnx", "ptl", "ort")


@dataclasses.dataclass
class StageOptions:
    """What runs after the SeReNe loop. Recorded in manifest.json so that ``--resume`` repeats the same stages."""

    surgery: bool = True
    round_channels: int | None = None
    """Keep a few extra (dead, exact) channels so every pruned width is a multiple of this (vectorized kernels)."""
    export_formats: tuple[str, ...] = EXPORT_FORMATS
    """Artifacts written for baseline and slim model; empty: no export."""
    report: bool = True
    quantize: dict | None = None
    """A :class:`~edgeprune.export.quantize.QuantizeConfig` as a dict: also ship ``model.int8.*`` (None: float only)."""

    def __post_init__(self) -> None:
        if self.quantize is not None:
            from .export.quantize import QuantizeConfig

            self.quantize = QuantizeConfig(**self.quantize).to_dict()  # validated now, not after hours of training
        self.export_formats = tuple(self.export_formats)
        unknown = [f for f in self.export_formats if f not in EXPORT_FORMATS]
        if unknown:
            raise ConfigError(f"unknown export format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)} or none")
        if self.round_channels is not None and self.round_channels < 1:
            raise ConfigError(f"--round-channels must be at least 1, got {self.round_channels}")
        if self.round_channels is not None and not self.surgery:
            raise ConfigError("--round-channels applies to surgery; drop --no-surgery")

    @classmethod
    def from_dict(cls, data: dict) -> "StageOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class RunContext:
    run_dir: Path
    config: CompressConfig
    model_path: str | None
    resume: bool = False
    data: object | None = None
    """A DataBundle; loaded from ``config.dataset`` when not given."""
    on_epoch: Callable[[int], None] | None = None
    model: nn.Module | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    baseline: dict = dataclasses.field(default_factory=dict)
    result: object | None = None
    summary: dict = dataclasses.field(default_factory=dict)
    options: StageOptions = dataclasses.field(default_factory=StageOptions)
    slim: nn.Module | None = None
    """The model the later stages ship: the surgered one, or the masked one when surgery is off or impossible."""
    files: dict = dataclasses.field(default_factory=dict)
    """Artifacts written so far, by role: "baseline", "masked", "manifest", "metrics", "summary" (later stages add
    theirs, e.g. "model", "onnx")."""


def _device(ctx: RunContext) -> torch.device:
    from .train import resolve_device

    return resolve_device(ctx.config.device)


def stage_load(ctx: RunContext) -> None:
    """Load the input model and the dataset it was trained on."""
    from .checkpoint import load_checkpoint
    from .data import load_dataset

    source = ctx.model_path
    if ctx.resume and (ctx.run_dir / BASELINE).exists():
        source = str(ctx.run_dir / BASELINE)
    if source is None:
        raise ConfigError("give the model checkpoint to compress (MODEL)")
    loaded = load_checkpoint(source)
    ctx.model, ctx.meta = loaded.model, dict(loaded.meta)
    if ctx.data is None:
        name = ctx.config.dataset or ctx.meta.get("dataset")
        if not name:
            raise ConfigError(f"{source} does not record its dataset; pass --dataset NAME")
        if ctx.meta.get("dataset") and ctx.config.dataset and ctx.meta["dataset"] != ctx.config.dataset:
            log.warning("model was trained on %s, compressing with %s", ctx.meta["dataset"], ctx.config.dataset)
        # The model was trained on images of a given size, channels and normalization: feed it the same.
        ctx.data = load_dataset(name, ctx.config.data_dir, seed=ctx.config.seed, val_fraction=ctx.config.val_fraction,
                                options=ctx.meta.get("data_options"))
    shape = tuple(ctx.data.input_shape)
    ctx.meta.setdefault("input_shape", list(shape))
    _check_fit(ctx, source)


def _check_fit(ctx: RunContext, source: str) -> None:
    """One forward of one real batch before any training: a mismatch is one line naming the fix."""
    from .compat import check_model_data

    trained_on = ctx.meta.get("dataset") or "the dataset it was trained on"
    check_model_data(ctx.model, ctx.data, getattr(ctx.model, "edgeprune_arch", None),
                     classes_fix=f"compress {source} on {trained_on} (--dataset)",
                     input_fix=lambda hint: f"compress it on {trained_on} (--dataset), or train a model for this data "
                                            f"(edgeprune train: {hint.replace('pass ', '')})")
    if ctx.data.options:
        ctx.meta["data_options"] = ctx.data.options


def stage_baseline(ctx: RunContext) -> None:
    """Evaluate the input model on the test split, write baseline.pt and manifest.json."""
    from . import distributed
    from .checkpoint import library_versions, save_checkpoint
    from .summary import summarize

    device = _device(ctx)
    ctx.model.to(device)
    te = distributed.evaluate(ctx.model, ctx.data.test, 1000, device, description="baseline test")
    summ = summarize(ctx.model, tuple(ctx.data.input_shape))
    ctx.baseline = {**_summary_dict(summ, baseline=True), "top1_error": te["top1_error"]}
    ctx.files.update(baseline=ctx.run_dir / BASELINE, manifest=ctx.run_dir / MANIFEST)
    if not distributed.is_main():
        return  # rank 0 writes the run folder
    if not (ctx.resume and (ctx.run_dir / BASELINE).exists()):
        meta = {**ctx.meta, "dataset": ctx.data.name, "input_shape": list(ctx.data.input_shape),
                "num_classes": ctx.data.num_classes, "top1_error": te["top1_error"],
                "test_accuracy": te["accuracy"], "source": ctx.model_path}
        meta.pop("history", None)
        save_checkpoint(ctx.run_dir / BASELINE, ctx.model.cpu(), meta=meta)
        ctx.model.to(device)
    manifest = {
        "format": "edgeprune-run", "version": 1, "command": "compress",
        "model": ctx.model_path, "dataset": ctx.data.name,
        "config": ctx.config.to_dict(), "stages": [name for name, _ in STAGES],
        "pipeline": dataclasses.asdict(ctx.options),
        "versions": library_versions(),
        "environment": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "device": str(device),
                        "cuda": torch.cuda.is_available(), "world_size": distributed.world_size()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _io.write_json(ctx.run_dir / MANIFEST, manifest)


def stage_compress(ctx: RunContext) -> None:
    """SeReNe Alg. 1 (regularize ⇄ threshold), then masked.pt and compress.json."""
    from . import distributed
    from .checkpoint import save_checkpoint
    from .regularize.loop import saved_row_count, serene_
    from .summary import summarize

    state = ctx.run_dir / STATE
    metrics = ctx.run_dir / METRICS
    resume = ctx.resume and state.exists()
    main = distributed.is_main()
    if resume and main:
        _truncate_jsonl(metrics, saved_row_count(state))
    elif metrics.exists() and main:
        metrics.unlink()
    try:
        result = serene_(ctx.model, ctx.data, ctx.config, state_path=state, resume=resume,
                         emit=lambda row: _io.append_jsonl(metrics, row), on_epoch=ctx.on_epoch)
    except KeyboardInterrupt:
        log.warning("interrupted: the state after the last completed epoch is in %s; continue with "
                    "`edgeprune compress --resume %s`", state, ctx.run_dir)
        raise
    ctx.result = result
    device = _device(ctx)
    model = result.model
    te = distributed.evaluate(model, ctx.data.test, 1000, device, description="pruned test")
    summ = summarize(model, tuple(ctx.data.input_shape))
    pruned = {**_summary_dict(summ, baseline=False), "top1_error": te["top1_error"]}
    info = {"method": ctx.config.method, "met_target": result.met_target, "stop_reason": result.stop_reason,
            "epochs": result.epochs, "thresholds": result.thresholds, "val_accuracy": result.final_val["accuracy"],
            "val_loss": result.final_val["loss"], "target_val_accuracy": result.target_accuracy,
            "baseline_val_accuracy": result.baseline_val["accuracy"], "seconds": round(result.seconds, 1),
            "prune": ctx.config.prune, "final_step": result.final_step}
    meta = {**ctx.meta, "dataset": ctx.data.name, "input_shape": list(ctx.data.input_shape),
            "num_classes": ctx.data.num_classes, "top1_error": te["top1_error"], "test_accuracy": te["accuracy"],
            "compress": info}
    meta.pop("history", None)
    if main:
        save_checkpoint(ctx.run_dir / MASKED, model.cpu(), meta=meta)
    ratio = ctx.baseline["params_total"] / max(pruned["params_nonzero"], 1)
    ctx.summary = {"dataset": ctx.data.name, "arch": getattr(model, "edgeprune_arch", None),
                   "method": ctx.config.method, "baseline": ctx.baseline, "pruned": pruned,
                   "compression_ratio": ratio, **info}
    if main:
        _io.write_json(ctx.run_dir / SUMMARY, ctx.summary)
    ctx.files.update(masked=ctx.run_dir / MASKED, metrics=metrics, summary=ctx.run_dir / SUMMARY, state=state)
    log.info("compressed %.2fx: neurons %s → %s, top-1 error %.2f%% → %.2f%%", ratio, ctx.baseline["neurons"],
             pruned["neurons"], 100 * ctx.baseline["top1_error"], 100 * pruned["top1_error"])


def _summary_dict(summ, baseline: bool) -> dict:
    return {"params_total": summ.params_total, "params_nonzero": summ.params_nonzero,
            "neurons": summ.neurons if baseline else summ.alive_neurons,
            "neurons_total": summ.neurons, "neurons_alive": summ.alive_neurons,
            "layers": [r.name for r in summ.layers], "macs": summ.macs}


def _truncate_jsonl(path: Path, rows: int) -> None:
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    _io.write_text(path, "".join(lines[:rows]))


def stage_surgery(ctx: RunContext) -> None:
    """Cut the dead neurons and filters out of the masked model into model.pt (exact, verified on real samples)."""
    from . import distributed
    from .checkpoint import load_checkpoint, save_checkpoint
    from .errors import SurgeryError
    from .surgery import surgery

    masked = ctx.result.model.cpu().eval()
    ctx.slim = masked
    if not distributed.is_main():
        return
    if not ctx.options.surgery:
        log.info("surgery skipped (--no-surgery): the masked model is exported as is")
        return
    shape = tuple(ctx.data.input_shape)
    try:
        res = surgery(masked, shape, round_channels=ctx.options.round_channels, probe_batch=ctx.data.val.x[:64])
    except SurgeryError as exc:
        # The masked model is still a correct result: ship it and say why it is not smaller.
        log.warning("surgery not possible, exporting the masked model instead: %s", exc)
        ctx.summary["surgery"] = {"skipped": str(exc)}
        _io.write_json(ctx.run_dir / SUMMARY, ctx.summary)
        return
    meta = dict(load_checkpoint(ctx.run_dir / MASKED).meta)
    meta["surgery_report"] = res.report
    save_checkpoint(ctx.run_dir / SLIM, res.model, meta=meta)
    ctx.slim = res.model
    r = res.report
    ctx.summary["slim"] = {"params_total": r["params_after"], "neurons": r["neurons_after"], "macs": r["macs_after"],
                           "max_abs_diff": r["verification"]["max_abs_diff"]}
    _io.write_json(ctx.run_dir / SUMMARY, ctx.summary)
    ctx.files.update(slim=ctx.run_dir / SLIM)
    log.info("surgery: neurons %s → %s, params %s → %s, MACs %s → %s (max |Δ| %.2g)", r["neurons_before"],
             r["neurons_after"], f"{r['params_before']:,}", f"{r['params_after']:,}", f"{r['macs_before']:,}",
             f"{r['macs_after']:,}", r["verification"]["max_abs_diff"])


def stage_export(ctx: RunContext) -> None:
    """Export baseline and slim model (baseline.* and model.*), each validated against PyTorch on real samples."""
    from . import distributed
    from .checkpoint import load_checkpoint
    from .export import export_all

    formats = ctx.options.export_formats
    if not formats or not distributed.is_main():
        return
    shape = tuple(ctx.data.input_shape)
    real = ctx.data.test.x[:16]
    baseline = load_checkpoint(ctx.run_dir / BASELINE).model.eval()
    exported = {
        "baseline": export_all(baseline, ctx.run_dir, "baseline", shape, formats, real_batch=real),
        "model": export_all(ctx.slim, ctx.run_dir, "model", shape, formats, real_batch=real,
                            baseline_params=ctx.baseline["params_total"]),
    }
    ctx.summary["export"] = {stem: {k: v for k, v in e.items() if k.endswith("_bytes") or k == "max_abs_diff"}
                             for stem, e in exported.items()}
    _io.write_json(ctx.run_dir / SUMMARY, ctx.summary)
    for stem, e in exported.items():
        ctx.files.update({f"{stem}.{fmt}": Path(a["path"]) for fmt, a in e["artifacts"].items()})


def stage_quantize(ctx: RunContext) -> None:
    """INT8 of the slim model (``model.int8.*``), gated on the test split; the verdict goes into compress.json."""
    from . import distributed
    from .export.quantize import QuantizeConfig, export_int8

    if ctx.options.quantize is None or not distributed.is_main():
        return
    config = QuantizeConfig(**ctx.options.quantize)
    record = export_int8(ctx.slim, ctx.run_dir, "model", tuple(ctx.data.input_shape), ctx.data, config,
                         ort="ort" in ctx.options.export_formats)
    ctx.summary["int8"] = {k: record[k] for k in ("float", "int8", "drop_pt", "max_drop_pt", "passed", "shipped",
                                                  "agreement") if k in record}
    ctx.summary["int8"].update({k: v for k, v in record.items() if k.endswith("_bytes")})
    _io.write_json(ctx.run_dir / SUMMARY, ctx.summary)
    for key, name in (record.get("artifacts") or {}).items():
        ctx.files[f"model.int8.{key}"] = ctx.run_dir / name


def stage_latency(ctx: RunContext) -> None:
    """With a latency table: the slim model's predicted latency on the table's device, and — for a table profiled
    on this machine (``cpu``) — its latency measured with the bench protocol against the baseline, side by side, and
    the prediction error (compress.json ``latency``). A phone table's prediction is checked with
    ``edgeprune bench RUN --device adb``."""
    from . import distributed
    from .latency import LatencyTable, latency_check

    if ctx.config.latency_table is None or not distributed.is_main() or ctx.slim is None:
        return
    table = LatencyTable.load(ctx.config.latency_table)
    info = latency_check(table, ctx.slim, tuple(ctx.data.input_shape), ctx.run_dir, ctx.config)
    ctx.summary["latency"] = info
    _io.write_json(ctx.run_dir / SUMMARY, ctx.summary)
    m = info.get("measured")
    if m:
        log.info("latency: predicted %.4f ms, measured %.4f ms (%+.1f %%); speedup predicted %.2fx, measured %.2fx",
                 info["predicted_ms"], m["slim_ms"], 100 * m["error"], info["predicted_speedup"], m["speedup"])
    else:
        log.info("latency on %s: predicted %.4f ms (%.2fx); measure it with `edgeprune bench %s --device adb`",
                 table.protocol.get("device"), info["predicted_ms"], info["predicted_speedup"], ctx.run_dir)


def stage_report(ctx: RunContext) -> None:
    """report.json, report.md and plots/ from the run folder (what `edgeprune report RUN` regenerates)."""
    from . import distributed
    from .report import write_report

    if not ctx.options.report or not distributed.is_main():
        return
    write_report(ctx.run_dir)
    ctx.files.update(report=ctx.run_dir / "report.md")


# The stage order: `edgeprune compress` runs them all; `edgeprune bench RUN` measures the result.
STAGES: list[tuple[str, Callable[[RunContext], None]]] = [
    ("load", stage_load),
    ("baseline", stage_baseline),
    ("compress", stage_compress),
    ("surgery", stage_surgery),
    ("export", stage_export),
    ("quantize", stage_quantize),
    ("latency", stage_latency),
    ("report", stage_report),
]


def run_compress(model_path: str | os.PathLike | None, out: str | os.PathLike, config: CompressConfig,
                 resume: bool = False, data=None, on_epoch: Callable[[int], None] | None = None,
                 options: StageOptions | None = None) -> dict:
    """Run every stage of :data:`STAGES` into the run folder ``out``; returns the compress summary."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder for the run")
    if not resume and (run_dir / STATE).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if options is None:
        options = stage_options_of_run(run_dir) if resume else StageOptions()
    ctx = RunContext(run_dir, config, str(model_path) if model_path is not None else None, resume, data, on_epoch,
                     options=options)
    for name, stage in STAGES:
        log.debug("stage %s", name)
        stage(ctx)
    return ctx.summary


def stage_options_of_run(run_dir: str | os.PathLike) -> StageOptions:
    """The post-loop stage options a run was started with (defaults for runs that recorded none)."""
    import json

    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return StageOptions()
    return StageOptions.from_dict(json.loads(path.read_text(encoding="utf-8")).get("pipeline") or {})


def resume_config(run_dir: str | os.PathLike, **budget) -> CompressConfig:
    """The config a run was started with, with only the budget fields (max_epochs, max_minutes, device) changed."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a compress run folder (no {MANIFEST}); check --resume")
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    cfg = CompressConfig.from_dict(data["config"], recorded=True)
    changes = {k: v for k, v in budget.items() if k in RESUMABLE_FIELDS and v is not None}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def model_of_run(run_dir: str | os.PathLike) -> str | None:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    import json

    return json.loads(path.read_text(encoding="utf-8")).get("model")
