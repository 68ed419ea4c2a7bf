"""Adapters for the runtimes' own benchmark tools, for cross-checking the ``ort-c`` runner or timing other formats.

Registered names (``PATH`` is where the tool is on the device; when ``PATH`` exists on this computer instead, the
file is pushed to ``<workdir>/tools/`` and run from there):

* ``perf_test:PATH`` — ONNX Runtime's ``onnxruntime_perf_test`` for ``.onnx``/``.ort``:
  ``-I -m times -r <warmup+runs> -x <threads> -p <profile>``. Per-inference times come from the profile's
  ``model_run`` events (``dur`` in µs); when no profile is found, from the summary lines (the average repeated,
  with a warning, since the tool prints no per-inference times). ``-I`` generates the inputs (free dims = 1).
* ``torch_speed_benchmark:PATH`` — PyTorch's ``speed_benchmark_torch`` (binaries/speed_benchmark_torch.cc) for
  ``.ptl``: ``--model --input_dims --input_type=float --warmup --iter --report_pep=true``; one
  ``PyTorchObserver {"type": "NET", "unit": "us", "metric": "latency", "value": "..."}`` line per iteration.
  It has no thread-count flag: restrict threads with ``cores`` (taskset).
* ``executorch:PATH`` — ExecuTorch's ``executor_runner`` for ``.pte``: ``--model_path --num_executions
  <warmup+runs> --cpu_threads <threads>``; per-iteration log lines
  ``I 00:00:06.075611 executorch:executor_runner.cpp:705] Iteration 1 of 11: 241.944288 ms``, the first
  ``warmup`` iterations dropped (the tool has no warm-up flag). Builds that print only
  ``Model executed successfully N time(s) in T ms.`` give the average repeated, with a warning.

Every command starts with ``echo EDGEPRUNE_EXPECT runs=N warmup=W`` so the parser knows which iterations are
warm-up and how many timed ones to expect.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re
import shlex

from android_bench.errors import RunnerOutputError, UnknownRunnerError
from android_bench.runners.base import Runner, RunSpec, register_runner

log = logging.getLogger(__name__)

TOOLS_DIR = "tools"
_EXPECT_RE = re.compile(r"EDGEPRUNE_EXPECT runs=(\d+) warmup=(\d+)")
PROFILE_BEGIN = "__EDGEPRUNE_PROFILE_BEGIN__"
PROFILE_END = "__EDGEPRUNE_PROFILE_END__"
PROFILE_PREFIX = "edgeprune_perf_test_profile"


def _expect(output: str) -> tuple[int | None, int]:
    m = _EXPECT_RE.search(output)
    return (int(m.group(1)), int(m.group(2))) if m else (None, 0)


def _tail(output: str, n: int = 5) -> str:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _finish(tool: str, samples: list[float], runs: int | None, warmup: int, output: str) -> list[float]:
    """Drop warm-up iterations, check the count, validate values."""
    if not samples:
        raise RunnerOutputError(f"{tool}: no per-inference times found in its output (last lines: {_tail(output)})")
    if runs is not None:
        if len(samples) == runs + warmup:
            samples = samples[warmup:]
        elif len(samples) > runs:
            samples = samples[len(samples) - runs:]
        elif len(samples) < runs:
            raise RunnerOutputError(
                f"{tool}: expected {runs} timed inferences but found {len(samples)} (truncated output? "
                f"last lines: {_tail(output)})"
            )
    bad = [s for s in samples if not math.isfinite(s) or s < 0]
    if bad:
        raise RunnerOutputError(f"{tool}: invalid per-inference time(s) {bad[:3]}")
    return samples


class _ToolRunner(Runner):
    abi = None  # whatever the tool was built for
    tool_label = "tool"

    def __init__(self, path: str | None):
        if not path:
            raise UnknownRunnerError(f"{self.name} needs the tool's path: use '{self.name}:/data/local/tmp/<binary>'")
        self.path = path
        local = pathlib.Path(path).expanduser()
        self.local = local if local.is_file() else None

    def files(self) -> list[tuple[pathlib.Path, str]]:
        return [(self.local, f"{TOOLS_DIR}/{self.local.name}")] if self.local else []

    def _exe(self, spec: RunSpec) -> str:
        if self.local:
            return f"{spec.workdir.rstrip('/')}/{TOOLS_DIR}/{self.local.name}"
        return self.path

    def _wrap(self, spec: RunSpec, args: list[str], *, prologue: str = "", epilogue: str = "") -> str:
        exe = self._exe(spec)
        run = " ".join(shlex.quote(a) for a in [exe, *args])
        if spec.cores:
            run = f"taskset {shlex.quote(spec.cores)} {run}"
        chmod = f"chmod 755 {shlex.quote(exe)} 2>/dev/null; " if self.local else ""
        # A subshell keeps the tool's exit status as the command's status even with an epilogue.
        return (f"echo EDGEPRUNE_EXPECT runs={spec.runs} warmup={spec.warmup}; {chmod}{prologue}"
                f"( {run}; rc=$?; {epilogue}exit $rc )")


# ---------------------------------------------------------------------------------------------------- perf_test


def parse_perf_test_profile(text: str) -> list[float]:
    """``model_run`` durations in ms, in run order, from an ORT profile (whole JSON array or one event per line)."""
    events = []
    stripped = text.strip()
    try:
        data = json.loads(stripped)
        if isinstance(data, dict):
            data = data.get("traceEvents", [])
        events = [e for e in data if isinstance(e, dict)]
    except ValueError:
        for ln in stripped.splitlines():
            ln = ln.strip().lstrip("[").rstrip("]").rstrip(",").strip()
            if "model_run" not in ln or not ln.startswith("{"):
                continue
            try:
                events.append(json.loads(ln))
            except ValueError as exc:
                raise RunnerOutputError(f"perf_test profile: malformed event line {ln[:120]!r}") from exc
    runs = []
    for e in events:
        if e.get("name") == "model_run":
            try:
                runs.append((float(e.get("ts", 0)), float(e["dur"]) / 1000.0))
            except (KeyError, TypeError, ValueError) as exc:
                raise RunnerOutputError(f"perf_test profile: model_run event without a numeric dur: {e}") from exc
    runs.sort(key=lambda r: r[0])
    return [ms for _, ms in runs]


_PT_REQUESTS = re.compile(r"Total inference requests:\s*(\d+)")
_PT_AVG = re.compile(r"Average inference time cost(?: total)?:\s*([0-9.eE+-]+)\s*ms")
_PT_OLD_ITERS = re.compile(r"Total iterations:\s*(\d+)")
_PT_OLD_AVG = re.compile(r"Average time cost:\s*([0-9.eE+-]+)\s*ms")


def parse_perf_test(output: str) -> list[float]:
    """Per-inference ms from ``onnxruntime_perf_test`` output (profile section preferred, summary as fallback)."""
    runs, warmup = _expect(output)
    if PROFILE_BEGIN in output:
        section = output.split(PROFILE_BEGIN, 1)[1].split(PROFILE_END, 1)[0]
        samples = parse_perf_test_profile(section)
        if samples:
            # perf_test runs one untimed "first inference" before the timed ones; it is profiled too.
            return _finish("perf_test", samples, runs, warmup, output)
    m_n = _PT_REQUESTS.search(output) or _PT_OLD_ITERS.search(output)
    m_avg = _PT_AVG.search(output) or _PT_OLD_AVG.search(output)
    if m_n and m_avg:
        n, avg = int(m_n.group(1)), float(m_avg.group(1))
        if n <= 0:
            raise RunnerOutputError("perf_test: summary reports 0 inference requests")
        log.warning("perf_test: no profile with per-inference times; using the summary average %.4f ms for all %d "
                    "runs (spread statistics are meaningless)", avg, n)
        return _finish("perf_test", [avg] * n, runs, warmup, output)
    raise RunnerOutputError(
        f"perf_test: neither profile events nor a summary ('Total inference requests', 'Average inference time "
        f"cost') in its output (last lines: {_tail(output)})"
    )


class PerfTestRunner(_ToolRunner):
    """``onnxruntime_perf_test`` (ONNX Runtime's benchmark tool)."""

    name = "perf_test"

    def command(self, spec: RunSpec) -> str:
        # perf_test always runs one warm-up inference itself; extra warm-up runs are run and dropped in parse().
        args = ["-I", "-m", "times", "-r", str(spec.runs + spec.warmup), "-x", str(spec.threads),
                "-p", PROFILE_PREFIX, spec.model_remote]
        cleanup = f"rm -f {PROFILE_PREFIX}*.json; "
        epilogue = (f"echo {PROFILE_BEGIN}; grep -h model_run {PROFILE_PREFIX}*.json; echo {PROFILE_END}; "
                    f"rm -f {PROFILE_PREFIX}*.json; ")
        if spec.input_shape:
            log.warning("perf_test: input_shape %s ignored (-I sets free dims to 1)", spec.input_shape)
        return self._wrap(spec, args, prologue=cleanup, epilogue=epilogue)

    def parse(self, output: str) -> list[float]:
        return parse_perf_test(output)


# ------------------------------------------------------------------------------------------ speed_benchmark_torch

_PEP_RE = re.compile(r"PyTorchObserver\s+(\{.*?)\s*$", re.M)


def parse_torch_speed_benchmark(output: str) -> list[float]:
    """Per-iteration ms from ``speed_benchmark_torch --report_pep=true`` lines."""
    runs, warmup = _expect(output)
    samples = []
    for m in _PEP_RE.finditer(output):
        try:
            rec = json.loads(m.group(1))
        except ValueError as exc:
            raise RunnerOutputError(
                f"torch_speed_benchmark: malformed PyTorchObserver line {m.group(0)[:160]!r}") from exc
        if not isinstance(rec, dict):
            raise RunnerOutputError(f"torch_speed_benchmark: malformed PyTorchObserver line {m.group(0)[:160]!r}")
        if rec.get("type") != "NET" or rec.get("metric") != "latency":
            continue
        unit = rec.get("unit", "us")
        scale = {"us": 1e-3, "ms": 1.0, "ns": 1e-6, "s": 1e3}.get(unit)
        if scale is None:
            raise RunnerOutputError(f"torch_speed_benchmark: unknown latency unit {unit!r}")
        try:
            samples.append(float(rec["value"]) * scale)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunnerOutputError(f"torch_speed_benchmark: latency record without a numeric value: {rec}") from exc
    if not samples and "Main run finished" in output:
        raise RunnerOutputError("torch_speed_benchmark printed no PyTorchObserver lines: run it with --report_pep=true")
    # The tool's own --warmup runs are not reported, so nothing to drop: warmup=0 here.
    return _finish("torch_speed_benchmark", samples, runs, 0, output)


class TorchSpeedBenchmarkRunner(_ToolRunner):
    """PyTorch's ``speed_benchmark_torch`` for TorchScript-lite (``.ptl``) models."""

    name = "torch_speed_benchmark"

    def command(self, spec: RunSpec) -> str:
        if not spec.input_shape:
            raise UnknownRunnerError(
                "torch_speed_benchmark needs the input shape (RunSpec.input_shape, e.g. --input-shape 1,3,32,32)")
        args = [f"--model={spec.model_remote}", f"--input_dims={','.join(str(int(d)) for d in spec.input_shape)}",
                "--input_type=float", f"--warmup={spec.warmup}", f"--iter={spec.runs}", "--report_pep=true"]
        return self._wrap(spec, args)

    def parse(self, output: str) -> list[float]:
        return parse_torch_speed_benchmark(output)


# ------------------------------------------------------------------------------------------------- executorch

_ET_ITER_RE = re.compile(r"\] Iteration (\d+) of (\d+): ([0-9.eE+-]+|nan|inf) ms")
_ET_TOTAL_RE = re.compile(r"Model executed successfully (\d+) time\(s\) in ([0-9.eE+-]+) ms")


def parse_executorch(output: str) -> list[float]:
    """Per-iteration ms from ExecuTorch ``executor_runner`` logs (summary average as a fallback)."""
    runs, warmup = _expect(output)
    samples, expected_index = [], 1
    for m in _ET_ITER_RE.finditer(output):
        idx = int(m.group(1))
        if idx != expected_index:
            raise RunnerOutputError(f"executorch: iteration {idx} out of order (expected {expected_index})")
        expected_index += 1
        samples.append(float(m.group(3)))
    if samples:
        return _finish("executorch", samples, runs, warmup, output)
    total = _ET_TOTAL_RE.search(output)
    if total:
        n, ms = int(total.group(1)), float(total.group(2))
        if n <= 0:
            raise RunnerOutputError("executorch: summary reports 0 executions")
        log.warning("executorch: this executor_runner prints no per-iteration times; using the average %.4f ms "
                    "(including warm-up) for all runs", ms / n)
        return _finish("executorch", [ms / n] * n, runs, warmup, output)
    raise RunnerOutputError(
        f"executorch: no 'Iteration i of n: t ms' lines nor 'Model executed successfully' in its output "
        f"(last lines: {_tail(output)})"
    )


class ExecutorchRunner(_ToolRunner):
    """ExecuTorch's ``executor_runner`` for ``.pte`` programs (inputs are all ones)."""

    name = "executorch"

    def command(self, spec: RunSpec) -> str:
        args = [f"--model_path={spec.model_remote}", f"--num_executions={spec.runs + spec.warmup}"]
        if spec.threads > 0:
            args.append(f"--cpu_threads={spec.threads}")
        if spec.input_shape:
            log.warning("executorch: input_shape %s ignored (the program's shapes are used)", spec.input_shape)
        return self._wrap(spec, args)

    def parse(self, output: str) -> list[float]:
        return parse_executorch(output)


register_runner("perf_test", PerfTestRunner)
register_runner("torch_speed_benchmark", TorchSpeedBenchmarkRunner)
register_runner("executorch", ExecutorchRunner)
