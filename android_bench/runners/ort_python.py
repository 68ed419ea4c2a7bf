"""``python-ort``: time models with onnxruntime's Python API on devices that have Python (ARM Linux boards with adbd).

Pushes ``ort_python_script.py`` and runs it with ``python3`` (or the interpreter given as ``python-ort:PATH``).
"""

from __future__ import annotations

import math
import pathlib
import shlex

from android_bench.errors import RunnerOutputError
from android_bench.runners.base import Runner, RunSpec, register_runner

SCRIPT = pathlib.Path(__file__).with_name("ort_python_script.py")
REMOTE_SCRIPT = "ort_python_script.py"


def parse_output(output: str) -> list[float]:
    """``INFER <ms>`` lines → samples; the ``SUMMARY runs=N`` line must be present and agree with them."""
    samples: list[float] = []
    summary_runs = None
    for line in output.splitlines():
        tag, _, rest = line.strip().partition(" ")
        if tag == "INFER":
            try:
                ms = float(rest)
            except ValueError:
                raise RunnerOutputError(f"python-ort output: malformed line {line.strip()!r}") from None
            if not math.isfinite(ms) or ms < 0:
                raise RunnerOutputError(f"python-ort output: invalid time in {line.strip()!r}")
            samples.append(ms)
        elif tag == "SUMMARY":
            fields = dict(tok.partition("=")[::2] for tok in rest.split())
            try:
                summary_runs = int(fields["runs"])
            except (KeyError, ValueError):
                raise RunnerOutputError(f"python-ort output: malformed summary {line.strip()!r}") from None
    if summary_runs is None:
        tail = " | ".join(ln.strip() for ln in output.strip().splitlines()[-3:]) or "(no output)"
        raise RunnerOutputError(
            f"python-ort output is truncated: no SUMMARY line after {len(samples)} INFER lines (last lines: {tail})"
        )
    if summary_runs != len(samples):
        raise RunnerOutputError(
            f"python-ort output is inconsistent: SUMMARY says runs={summary_runs} but {len(samples)} INFER lines"
        )
    if not samples:
        raise RunnerOutputError("python-ort output has no timed inferences")
    return samples


class PythonOrtRunner(Runner):
    name = "python-ort"
    abi = None

    def __init__(self, python: str | None = None):
        self.python = python or "python3"

    def files(self) -> list[tuple[pathlib.Path, str]]:
        return [(SCRIPT, REMOTE_SCRIPT)]

    def command(self, spec: RunSpec) -> str:
        args = [self.python, f"{spec.workdir.rstrip('/')}/{REMOTE_SCRIPT}", "--model", spec.model_remote,
                "--runs", str(spec.runs), "--warmup", str(spec.warmup), "--threads", str(spec.threads)]
        if spec.input_shape:
            args += ["--input-shape", ",".join(str(int(d)) for d in spec.input_shape)]
        run = " ".join(shlex.quote(a) for a in args)
        return f"taskset {shlex.quote(spec.cores)} {run}" if spec.cores else run

    def parse(self, output: str) -> list[float]:
        return parse_output(output)


register_runner("python-ort", lambda arg: PythonOrtRunner(arg))
