"""The measurement protocol: warm-up (at least N runs and S seconds per model), then timed runs of every model in
alternating blocks (A B A B …, 20 blocks per model by default) in one process, so machine drift (thermal state, other
load) hits dense and slim alike; raw samples and the block order are kept, and the block is the unit of the speedup
interval. SeReNe Table X times 1,000 inferences per model; that is the default here too."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import time
from typing import Any, Sequence

import numpy as np

from ..errors import BenchError
from .runtimes import RUNTIMES, ModelSource, Runner, make_runner
from .stats import STAT_KEYS, is_blocked, speedup, split_blocks, summarize_samples

log = logging.getLogger(__name__)

SCHEMA = "edgeprune-bench/1"
DEVICES = ("cpu", "cuda")
BLOCKS = 20
"""Alternating blocks per model when no block size is given: the speedup interval resamples blocks, so it needs a
few of them (block size = ceil(runs / 20); 50 for the default 1,000 runs)."""


@dataclasses.dataclass
class ModelResult:
    label: str
    role: str
    samples_ms: list[float]
    runtime: str
    format: str = ""
    path: str | None = None
    input_shape: list[int] | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    speedup: dict | None = None
    """Speedup of this model over the baseline (absent for the baseline itself)."""
    block_counts: list[int] | None = None
    """Runs in each of this model's blocks, in execution order (None: block structure unknown)."""
    warmup_runs: int | None = None
    """Warm-up runs actually made (at least ``warmup``; more when the warm-up time needed them)."""
    warmup_s: float | None = None
    """Seconds the warm-up took."""

    def blocks(self) -> list[list[float]] | None:
        """The samples cut into this model's blocks, or None when the block structure is unknown."""
        return split_blocks(self.samples_ms, self.block_counts) if self.block_counts is not None else None


@dataclasses.dataclass
class BenchResult:
    models: list[ModelResult]
    runtime: str
    runs: int
    """Timed runs requested per model (fewer were measured when ``interrupted``)."""
    warmup: int
    threads: int
    batch_size: int
    block_size: int
    seed: int
    device: dict
    """Where it ran: the environment record (CPU model, cores, platform, versions, threads)."""
    block_order: list[dict] = dataclasses.field(default_factory=list)
    """One entry per timed block, in execution order: model index, label, first sample index, samples in it."""
    interrupted: bool = False
    warmup_seconds: float = 0.0
    """Least warm-up time per model, in seconds (the warm-up lasts until both ``warmup`` runs and this are done)."""

    @property
    def baseline(self) -> ModelResult | None:
        return next((m for m in self.models if m.role == "baseline"), None)

    @property
    def speedup(self) -> dict | None:
        """The dense ÷ slim speedup when exactly one model is compared with the baseline."""
        slim = [m for m in self.models if m.role != "baseline" and m.speedup is not None]
        return slim[0].speedup if len(slim) == 1 else None

    def to_dict(self) -> dict:
        """The bench JSON: per model runs, warmup, threads, the statistics, raw samples_ms, runtime and device."""
        models = []
        for m in self.models:
            rec: dict[str, Any] = {
                "label": m.label,
                "role": m.role,
                "path": m.path,
                "format": m.format,
                "runtime": m.runtime,
                "input_shape": m.input_shape,
                "batch_size": self.batch_size,
                "runs": len(m.samples_ms),
                "runs_requested": self.runs,
                "warmup": self.warmup,
                "threads": self.threads,
                "warmup_seconds": self.warmup_seconds,
                "warmup_runs": m.warmup_runs,
                "warmup_s": m.warmup_s,
                **{k: m.stats.get(k) for k in STAT_KEYS},
                "samples_ms": list(m.samples_ms),
                "block_counts": m.block_counts,
                "block_medians_ms": ([float(np.median(b)) if b else None for b in m.blocks()]
                                     if m.block_counts is not None else None),
                "device": self.device,
            }
            if m.speedup is not None:
                rec["speedup"] = m.speedup
            models.append(rec)
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "runtime": self.runtime,
            "runs": self.runs,
            "warmup": self.warmup,
            "warmup_seconds": self.warmup_seconds,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "seed": self.seed,
            "interrupted": self.interrupted,
            "device": self.device,
            "models": models,
            "block_order": self.block_order,
        }
        if self.speedup is not None:
            out["speedup"] = self.speedup
        return out


def result_from_samples(
    samples_ms: dict[str, Sequence[float] | Sequence[Sequence[float]]],
    *,
    runtime: str,
    device: dict,
    warmup: int,
    threads: int,
    baseline: str | None = None,
    batch_size: int = 1,
    block_size: int = 0,
    block_order: list[dict] | None = None,
    seed: int = 0,
    interrupted: bool = False,
    paths: dict[str, str] | None = None,
    input_shapes: dict[str, Sequence[int]] | None = None,
    resamples: int = 2000,
    warmup_seconds: float = 0.0,
) -> BenchResult:
    """Build a :class:`BenchResult` from raw per-inference samples, e.g. those ``android_bench.run_benchmark``
    returns with its device record, so phones and the local CPU share statistics, tables, JSON and plots.

    ``samples_ms`` maps a label to its latencies in milliseconds: a list of blocks (each a list of runs, in execution
    order; block k of a model is paired with block k of the baseline) or a flat list when the block structure is
    unknown (the speedup interval then resamples single runs and says so). ``baseline`` names the dense model the
    speedups divide by."""
    if baseline is not None and baseline not in samples_ms:
        raise BenchError(f"baseline {baseline!r} is not among the measured models {sorted(samples_ms)}")
    models = []
    for label, samples in samples_ms.items():
        if is_blocked(samples):
            counts = [len(b) for b in samples]
            arr = [float(v) for b in samples for v in b]
        else:
            counts, arr = None, [float(v) for v in samples]
        models.append(ModelResult(
            label=label,
            role="baseline" if label == baseline else "model",
            samples_ms=arr,
            runtime=runtime,
            path=(paths or {}).get(label),
            input_shape=list((input_shapes or {}).get(label, [])) or None,
            stats=summarize_samples(arr),
            block_counts=counts,
        ))
    _attach_speedups(models, seed, resamples)
    runs = max((len(m.samples_ms) for m in models), default=0)
    return BenchResult(models, runtime, runs, warmup, threads, batch_size, block_size, seed, device,
                       list(block_order or []), interrupted, warmup_seconds)


def _android_blocks(r: dict) -> list[list[float]] | list[float]:
    """One android_bench result's samples: its ``block_samples_ms`` when present, else ``samples_ms`` cut by the
    ``runs`` of its ``blocks`` (each block one runner process, samples appended in block order) when those add up,
    else the flat samples (block structure unknown)."""
    if r.get("block_samples_ms") is not None:
        return [list(b) for b in r["block_samples_ms"]]
    flat = list(r.get("samples_ms") or [])
    counts = [int(b.get("runs", 0)) for b in r.get("blocks") or []]
    if counts and sum(counts) == len(flat):
        return split_blocks(flat, counts)
    return flat


def result_from_android(record: dict, *, seed: int = 0, resamples: int = 2000) -> BenchResult:
    """Adapt the record ``android_bench.run_benchmark`` returns (``device``, ``runner``, ``threads``, ``order`` and
    ``results`` with raw ``samples_ms`` and ``blocks``) into a :class:`BenchResult`; a ``partial`` record becomes an
    interrupted result. Plain dicts only: edgeprune does not import android_bench."""
    results = record.get("results") or []
    if not results:
        raise BenchError("the Android benchmark record holds no results; rerun android_bench")
    names = [r.get("model") or r.get("path") or f"model{i}" for i, r in enumerate(results)]
    if len(set(names)) < len(names):
        names = [r.get("path") or n for r, n in zip(results, names)]
    labels = {id(r): n for r, n in zip(results, names)}
    baseline = next((labels[id(r)] for r in results if r.get("role") == "baseline"), None)
    # Rebuild the execution order of blocks: record["order"] names the model of each block in turn.
    block_order: list[dict] = []
    next_block = [0] * len(results)
    done = [0] * len(results)
    for name in record.get("order", []):
        idx = next((i for i, r in enumerate(results) if r.get("model") == name and next_block[i] < len(r["blocks"])),
                   None)
        if idx is None:
            continue
        n = int(results[idx]["blocks"][next_block[idx]].get("runs", 0))
        block_order.append({"model": idx, "label": names[idx], "start": done[idx], "count": n})
        next_block[idx] += 1
        done[idx] += n
    first = results[0]
    device = {"kind": "adb", **dict(record.get("device") or {}), "runner": record.get("runner"),
              "threads": record.get("threads", first.get("threads"))}
    res = result_from_samples(
        {labels[id(r)]: _android_blocks(r) for r in results},
        runtime=str(first.get("runtime") or record.get("runner") or "?"),
        device=device,
        warmup=int(first.get("warmup", 0)),
        threads=int(record.get("threads") or first.get("threads") or 0),
        baseline=baseline,
        block_order=block_order,
        seed=seed,
        interrupted=bool(record.get("partial")),
        paths={labels[id(r)]: r.get("path") for r in results},
        resamples=resamples,
        warmup_seconds=float(first.get("warmup_seconds") or record.get("warmup_seconds") or 0.0),
    )
    res.runs = max(int(r.get("runs_requested", len(m.samples_ms))) for r, m in zip(results, res.models))
    return res


def _attach_speedups(models: list[ModelResult], seed: int, resamples: int) -> None:
    base = [m for m in models if m.role == "baseline"]
    if len(base) > 1:
        raise BenchError("more than one baseline model; give one dense baseline")
    if not base or not base[0].samples_ms:
        return
    base_blocks = base[0].blocks()
    for m in models:
        if m.role != "baseline" and m.samples_ms:
            blocks = m.blocks()
            if base_blocks and blocks:  # baseline block k pairs with this model's block k
                m.speedup = speedup(base_blocks, blocks, seed=seed, resamples=resamples)
            else:
                m.speedup = speedup(base[0].samples_ms, m.samples_ms, seed=seed, resamples=resamples)


def block_schedule(n_models: int, runs: int, block_size: int) -> list[tuple[int, int]]:
    """(model index, samples) per block: every model in turn gets ``block_size`` runs until each has ``runs``."""
    schedule = []
    for b in range(math.ceil(runs / block_size)):
        count = min(block_size, runs - b * block_size)
        schedule += [(i, count) for i in range(n_models)]
    return schedule


def default_block_size(runs: int, blocks: int = BLOCKS) -> int:
    """Runs per block so that each model gets ``blocks`` alternating blocks (fewer when runs < blocks)."""
    return max(1, math.ceil(runs / blocks))


def _validate(runtime: str, runs: int, warmup: int, threads: int, batch_size: int, block_size: int,
              device: str, n_models: int, warmup_seconds: float) -> None:
    if n_models < 1:
        raise BenchError("nothing to benchmark: give at least one model")
    if runtime not in RUNTIMES:
        raise BenchError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if device not in DEVICES:
        raise BenchError(f"device {device!r} cannot be benchmarked locally; use cpu (or cuda with --runtime torch)")
    if device == "cuda":
        import torch

        if runtime != "torch":
            raise BenchError("--device cuda needs --runtime torch")
        if not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is available here; use --device cpu")
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1),
                             ("batch_size", batch_size, 1), ("block_size", block_size, 1)):
        if not isinstance(value, int) or value < low:
            raise BenchError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(warmup_seconds, (int, float)) or not 0 <= warmup_seconds < math.inf:
        raise BenchError(f"warmup_seconds must be a number >= 0, got {warmup_seconds!r}")


@contextlib.contextmanager
def _threads(runtime: str, threads: int):
    """Fix PyTorch's intra-op threads for the measurement and restore them after (ONNX Runtime sessions get theirs
    in their SessionOptions)."""
    import torch

    before = torch.get_num_threads()
    if runtime in ("torch", "ptl"):
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_models(
    models: list[ModelSource],
    *,
    runtime: str = "onnxruntime",
    runs: int = 1000,
    warmup: int = 50,
    threads: int = 1,
    batch_size: int = 1,
    input_shape: tuple[int, ...] | None = None,
    block_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    resamples: int = 2000,
    warmup_seconds: float = 1.0,
) -> BenchResult:
    """Benchmark ``models`` on this machine and return raw samples with their statistics.

    Protocol: load every model (one trial inference checks the input); warm each up with discarded runs until it has
    made at least ``warmup`` runs *and* spent at least ``warmup_seconds``; then ``runs`` timed runs each with
    ``time.perf_counter_ns`` in alternating blocks of ``block_size`` (default: ``runs`` / 20 rounded up, i.e. 20
    blocks per model); garbage collection is paused while timing. Ctrl-C stops the measurement and returns what was
    measured with ``interrupted=True``.
    """
    import torch

    from .._progress import make_progress
    from .environment import environment_info

    if block_size is None and isinstance(runs, int) and runs >= 1:
        block_size = default_block_size(runs)
    _validate(runtime, runs, warmup, threads, batch_size, block_size, device, len(models), warmup_seconds)
    if sum(m.role == "baseline" for m in models) > 1:
        raise BenchError("more than one baseline model; give one dense baseline")
    shape = tuple(int(v) for v in input_shape) if input_shape else None
    env = environment_info(runtime, threads, device)
    samples = [np.zeros(runs, dtype=np.int64) for _ in models]
    done = [0] * len(models)
    warmed: list[tuple[int, float]] = [(0, 0.0)] * len(models)
    block_order: list[dict] = []
    runners: list[Runner] = []
    interrupted = False
    with _threads(runtime, threads), torch.inference_mode():
        try:
            for src in models:
                runners.append(make_runner(src, runtime, threads=threads, batch_size=batch_size,
                                           input_shape=shape, seed=seed, device=device))
                log.debug("loaded %s (%s, input %s)", src.label, runners[-1].format, runners[-1].input_shape)
            schedule = block_schedule(len(runners), runs, block_size)
            with make_progress() as bar:
                task = bar.add_task("warm-up", total=len(runners), info="") if progress else None
                for i, r in enumerate(runners):
                    warmed[i] = _warm_up(r.call, warmup, warmup_seconds)
                    if task is not None:
                        bar.advance(task, 1)
                        bar.update(task, info=f"{r.label}: {warmed[i][0]} runs, {warmed[i][1]:.1f} s")
                log.info("measuring %d runs of %s (%s, %d thread%s, blocks of %d)", runs,
                         " vs ".join(r.label for r in runners), runtime, threads, "" if threads == 1 else "s",
                         block_size)
                if task is not None:
                    bar.update(task, description="timing", total=runs * len(runners), completed=0)
                gc_was_enabled = gc.isenabled()
                gc.disable()  # a collection inside a timed run would be charged to whichever model ran
                clock = time.perf_counter_ns
                try:
                    for idx, count in schedule:
                        call, out, start = runners[idx].call, samples[idx], done[idx]
                        block_order.append({"model": idx, "label": runners[idx].label, "start": start, "count": 0})
                        for j in range(start, start + count):
                            t0 = clock()
                            call()
                            out[j] = clock() - t0
                            done[idx] = j + 1
                        block_order[-1]["count"] = count
                        if task is not None:
                            bar.advance(task, count)
                            bar.update(task, info=runners[idx].label)
                finally:
                    if gc_was_enabled:
                        gc.enable()
        except KeyboardInterrupt:
            if len(runners) < len(models):
                raise  # interrupted while loading: nothing was measured
            interrupted = True
            if block_order:
                last = block_order[-1]
                last["count"] = done[last["model"]] - last["start"]
                if last["count"] == 0:
                    block_order.pop()
            log.warning("interrupted: keeping the %s runs measured so far", "/".join(str(d) for d in done))
        finally:
            for r in runners:
                r.close()
    results = []
    for i, (src, r, s, n) in enumerate(zip(models, runners, samples, done)):
        ms = (s[:n] / 1e6).tolist()
        results.append(ModelResult(
            label=r.label,
            role=src.role,
            samples_ms=ms,
            runtime=runtime,
            format=r.format,
            path=str(src.path) if src.path is not None else None,
            input_shape=list(r.input_shape),
            stats=summarize_samples(ms),
            block_counts=[b["count"] for b in block_order if b["model"] == i],
            warmup_runs=warmed[i][0],
            warmup_s=round(warmed[i][1], 4),
        ))
    _attach_speedups(results, seed, resamples)
    return BenchResult(results, runtime, runs, warmup, threads, batch_size, block_size, seed, env, block_order,
                       interrupted, float(warmup_seconds))


def _warm_up(call, runs: int, seconds: float) -> tuple[int, float]:
    """Discarded runs until at least ``runs`` are made and ``seconds`` have passed: a run count alone warms a 0.05 ms
    model for 3 ms, too short for the clock to ramp up or the caches and allocator to settle."""
    clock = time.perf_counter
    t0 = clock()
    n = 0
    while n < runs or clock() - t0 < seconds:
        call()
        n += 1
    return n, clock() - t0
