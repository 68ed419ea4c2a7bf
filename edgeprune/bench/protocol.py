"""The measurement protocol: warm-up, then timed runs of every model in alternating blocks (A B A B …) in one
process, so machine drift (thermal state, other load) hits dense and slim alike; raw samples and the block order are
kept. SeReNe Table X times 1,000 inferences per model; that is the default here too."""

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
from .stats import STAT_KEYS, speedup, summarize_samples

log = logging.getLogger(__name__)

SCHEMA = "edgeprune-bench/1"
DEVICES = ("cpu", "cuda")


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
                **{k: m.stats.get(k) for k in STAT_KEYS},
                "samples_ms": list(m.samples_ms),
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
    samples_ms: dict[str, Sequence[float]],
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
) -> BenchResult:
    """Build a :class:`BenchResult` from raw per-inference samples (label → milliseconds), e.g. those
    ``android_bench.run_benchmark`` returns with its device record, so phones and the local CPU share statistics,
    tables, JSON and plots. ``baseline`` names the dense model the speedups divide by."""
    if baseline is not None and baseline not in samples_ms:
        raise BenchError(f"baseline {baseline!r} is not among the measured models {sorted(samples_ms)}")
    models = []
    for label, samples in samples_ms.items():
        arr = [float(v) for v in samples]
        models.append(ModelResult(
            label=label,
            role="baseline" if label == baseline else "model",
            samples_ms=arr,
            runtime=runtime,
            path=(paths or {}).get(label),
            input_shape=list((input_shapes or {}).get(label, [])) or None,
            stats=summarize_samples(arr),
        ))
    _attach_speedups(models, seed, resamples)
    runs = max((len(m.samples_ms) for m in models), default=0)
    return BenchResult(models, runtime, runs, warmup, threads, batch_size, block_size, seed, device,
                       list(block_order or []), interrupted)


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
        {labels[id(r)]: r.get("samples_ms", []) for r in results},
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
    )
    res.runs = max(int(r.get("runs_requested", len(r.get("samples_ms", [])))) for r in results)
    return res


def _attach_speedups(models: list[ModelResult], seed: int, resamples: int) -> None:
    base = [m for m in models if m.role == "baseline"]
    if len(base) > 1:
        raise BenchError("more than one baseline model; give one dense baseline")
    if not base or not base[0].samples_ms:
        return
    for m in models:
        if m.role != "baseline" and m.samples_ms:
            m.speedup = speedup(base[0].samples_ms, m.samples_ms, seed=seed, resamples=resamples)


def block_schedule(n_models: int, runs: int, block_size: int) -> list[tuple[int, int]]:
    """(model index, samples) per block: every model in turn gets ``block_size`` runs until each has ``runs``."""
    schedule = []
    for b in range(math.ceil(runs / block_size)):
        count = min(block_size, runs - b * block_size)
        schedule += [(i, count) for i in range(n_models)]
    return schedule


def _validate(runtime: str, runs: int, warmup: int, threads: int, batch_size: int, block_size: int,
              device: str, n_models: int) -> None:
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
    block_size: int = 50,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    resamples: int = 2000,
) -> BenchResult:
    """Benchmark ``models`` on this machine and return raw samples with their statistics.

    Protocol: load every model (one trial inference checks the input), ``warmup`` discarded runs each, then ``runs``
    timed runs each with ``time.perf_counter_ns`` in alternating blocks of ``block_size``; garbage collection is
    paused while timing. Ctrl-C stops the measurement and returns what was measured with ``interrupted=True``.
    """
    import torch

    from .._progress import make_progress
    from .environment import environment_info

    _validate(runtime, runs, warmup, threads, batch_size, block_size, device, len(models))
    if sum(m.role == "baseline" for m in models) > 1:
        raise BenchError("more than one baseline model; give one dense baseline")
    shape = tuple(int(v) for v in input_shape) if input_shape else None
    env = environment_info(runtime, threads, device)
    samples = [np.zeros(runs, dtype=np.int64) for _ in models]
    done = [0] * len(models)
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
                task = bar.add_task("warm-up", total=warmup * len(runners), info="") if progress else None
                for r in runners:
                    for _ in range(warmup):
                        r.call()
                    if task is not None:
                        bar.advance(task, warmup)
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
    for src, r, s, n in zip(models, runners, samples, done):
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
        ))
    _attach_speedups(results, seed, resamples)
    return BenchResult(results, runtime, runs, warmup, threads, batch_size, block_size, seed, env, block_order,
                       interrupted)
