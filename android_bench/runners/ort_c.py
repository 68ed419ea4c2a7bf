"""``ort-c``: the edgeprune ONNX Runtime C runner (``android_bench/runner/edgeprune_ort_runner.c``) on arm64 phones.

The runner is a glibc build started from ``adb shell`` through its own loader (see ``runner_build``); its output
format (version 1) is documented at the top of the C source and in ``docs/runner.md``:

    EDGEPRUNE_RUNNER 1
    INFER <index> <ms>          one line per timed inference, indices 0..N-1
    SUMMARY runs=<N> mean_ms=... median_ms=... min_ms=... max_ms=...
    OUTPUT <name> shape=<d0>x<d1> dtype=float32 sum=<s> first=<v0>,<v1>,...
    END

Names accepted by the registry: ``ort-c`` (arm64 bundle, built or reused from the cache on first use) and
``ort-c:/path/to/bundle`` (a bundle folder built elsewhere, e.g. by ``scripts/build_runner.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import shlex

from android_bench.errors import RunnerOutputError, UnknownRunnerError
from android_bench.runners.base import Runner, RunSpec, register_runner

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REMOTE_DIR = "ort_c"  # bundle folder inside the harness workdir


@dataclasses.dataclass
class OutputRecord:
    name: str
    shape: tuple[int, ...]
    dtype: str
    sum: float | None
    first: list[float]


@dataclasses.dataclass
class RunnerReport:
    """Everything the runner printed, parsed."""

    format_version: int
    ort_version: str | None
    api_version: int | None
    model: str | None
    threads: int | None
    warmup: int | None
    inputs: dict[str, tuple[int, ...]]
    samples_ms: list[float]
    summary: dict[str, float]
    outputs: list[OutputRecord]
    complete: bool  # the END line was seen


def _shape(text: str) -> tuple[int, ...]:
    if text == "scalar":
        return ()
    return tuple(int(d) for d in text.split("x"))


def _fields(tokens: list[str]) -> dict[str, str]:
    out = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if sep:
            out[key] = value
    return out


def _tail(output: str, n: int = 5) -> str:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def parse_report(output: str) -> RunnerReport:
    """Parse the runner's stdout (extra lines, e.g. shell noise, are ignored); raise RunnerOutputError if malformed."""
    lines = [ln.strip() for ln in output.replace("\r", "\n").split("\n")]
    errors = [ln for ln in lines if ln.startswith("error:")]
    header = next((ln for ln in lines if ln.startswith("EDGEPRUNE_RUNNER")), None)
    if header is None:
        why = f"it reported: {errors[0]}" if errors else f"last lines: {_tail(output)}"
        raise RunnerOutputError(f"ort-c runner output has no 'EDGEPRUNE_RUNNER' header line ({why})")
    parts = header.split()
    if len(parts) != 2 or not parts[1].isdigit():
        raise RunnerOutputError(f"ort-c runner header is malformed: {header!r}")
    version = int(parts[1])
    if version != FORMAT_VERSION:
        raise RunnerOutputError(
            f"ort-c runner output format {version} is not supported (expected {FORMAT_VERSION}): rebuild the bundle "
            "with scripts/build_runner.py --force"
        )
    report = RunnerReport(version, None, None, None, None, None, {}, [], {}, [], False)
    summary_runs: int | None = None
    for ln in lines:
        tag, _, rest = ln.partition(" ")
        try:
            if tag == "INFER":
                idx_text, ms_text = rest.split()
                idx, ms = int(idx_text), float(ms_text)
                if idx != len(report.samples_ms):
                    raise RunnerOutputError(
                        f"ort-c runner output: INFER index {idx} out of order (expected {len(report.samples_ms)})"
                    )
                if not math.isfinite(ms) or ms < 0:
                    raise RunnerOutputError(f"ort-c runner output: invalid time in {ln!r}")
                report.samples_ms.append(ms)
            elif tag == "SUMMARY":
                f = _fields(rest.split())
                summary_runs = int(f.pop("runs"))
                report.summary = {k: float(v) for k, v in f.items()}
            elif tag == "ORT_VERSION":
                tokens = rest.split()
                report.ort_version = tokens[0]
                api = _fields(tokens[1:]).get("api")
                report.api_version = int(api) if api is not None else None
            elif tag == "MODEL":
                report.model = rest
            elif tag == "THREADS":
                report.threads = int(rest)
            elif tag == "WARMUP":
                report.warmup = int(rest)
            elif tag == "INPUT":
                name, *tokens = rest.split()
                report.inputs[name] = _shape(_fields(tokens)["shape"])
            elif tag == "OUTPUT":
                name, *tokens = rest.split()
                f = _fields(tokens)
                first = [float(v) for v in f["first"].split(",") if v] if f.get("first") else []
                report.outputs.append(OutputRecord(
                    name=name, shape=_shape(f["shape"]) if "shape" in f else (), dtype=f.get("dtype", "?"),
                    sum=float(f["sum"]) if "sum" in f else None, first=first,
                ))
            elif tag == "END":
                report.complete = True
        except RunnerOutputError:
            raise
        except (ValueError, KeyError) as exc:
            raise RunnerOutputError(f"ort-c runner output: malformed line {ln!r} ({exc})") from exc
    if summary_runs is None:
        why = f"it reported: {errors[0]}" if errors else f"last lines: {_tail(output)}"
        raise RunnerOutputError(
            f"ort-c runner output is truncated: no SUMMARY line after {len(report.samples_ms)} INFER lines ({why})"
        )
    if summary_runs != len(report.samples_ms):
        raise RunnerOutputError(
            f"ort-c runner output is inconsistent: SUMMARY says runs={summary_runs} but {len(report.samples_ms)} "
            "INFER lines were found"
        )
    if summary_runs == 0:
        raise RunnerOutputError("ort-c runner output has no timed inferences")
    return report


BUNDLE_ABIS = {"arm64": "arm64-v8a", "x86_64": "x86_64"}
"""Bundle arch (BUNDLE.json) → the Android ABI it runs on."""


def bundle_abi(path: pathlib.Path) -> str:
    """The Android ABI a bundle folder was built for, from its BUNDLE.json (arm64-v8a when it does not say)."""
    import json

    try:
        arch = json.loads((path / "BUNDLE.json").read_text()).get("arch", "arm64")
    except (OSError, ValueError):
        return "arm64-v8a"
    return BUNDLE_ABIS.get(arch, arch)


class OrtCRunner(Runner):
    """The C runner bundle, pushed to ``<workdir>/ort_c/`` and started with ``sh ort_c/run.sh``."""

    name = "ort-c"
    abi = "arm64-v8a"

    def __init__(self, arg: str | None = None, *, cache_dir=None):
        self._bundle: pathlib.Path | None = None
        self._cache_dir = cache_dir
        if arg:
            path = pathlib.Path(arg).expanduser()
            if not (path / "run.sh").is_file() or not (path / "edgeprune_ort_runner").is_file():
                raise UnknownRunnerError(
                    f"ort-c:{arg}: not a runner bundle folder (expected run.sh and edgeprune_ort_runner in it; "
                    "build one with scripts/build_runner.py, or use plain 'ort-c')"
                )
            self._bundle = path
            self.abi = bundle_abi(path)

    @property
    def bundle(self) -> pathlib.Path:
        """The local bundle folder (built or reused from the cache on first access)."""
        if self._bundle is None:
            from android_bench.runner_build import build_bundle

            self._bundle = build_bundle("arm64", self._cache_dir)
        return self._bundle

    def files(self) -> list[tuple[pathlib.Path, str]]:
        from android_bench.runner_build import bundle_files

        bundle = self.bundle
        return [(bundle / rel, f"{REMOTE_DIR}/{rel.as_posix()}") for rel in bundle_files(bundle)]

    def command(self, spec: RunSpec) -> str:
        base = f"{spec.workdir.rstrip('/')}/{REMOTE_DIR}"
        args = [
            "sh", f"{base}/run.sh", "--model", spec.model_remote, "--runs", str(spec.runs),
            "--warmup", str(spec.warmup), "--threads", str(spec.threads),
        ]
        if spec.input_shape:
            args += ["--input-shape", ",".join(str(int(d)) for d in spec.input_shape)]
        run = " ".join(shlex.quote(a) for a in args)
        if spec.cores:
            run = f"taskset {shlex.quote(spec.cores)} {run}"
        executables = " ".join(shlex.quote(f"{base}/{p}") for p in ("run.sh", "edgeprune_ort_runner",
                                                                      "lib/ld-linux-aarch64.so.1"))
        return f"chmod 755 {executables} 2>/dev/null; {run}"

    def parse(self, output: str) -> list[float]:
        return parse_report(output).samples_ms


register_runner("ort-c", lambda arg: OrtCRunner(arg))
