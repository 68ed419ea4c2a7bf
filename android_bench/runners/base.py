"""The runner interface and registry: a runner says what to push, how to start a timed run, and how to read it.

A runner is chosen by name: ``python-ort``, or ``kind:ARG`` (e.g. ``perf_test:/path/to/onnxruntime_perf_test``) where
the part after the first colon is handed to the factory registered for ``kind``. Runner modules register themselves
with ``register_runner(prefix, factory)`` when imported; ``get_runner`` imports the built-in ones on first use.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import pathlib
from typing import Callable

from android_bench.errors import UnknownRunnerError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunSpec:
    model_remote: str  # path of the model on the device
    runs: int
    warmup: int
    threads: int
    cores: str | None  # hex CPU mask for taskset, e.g. "f0", or None
    workdir: str  # device work dir (runner files live here)
    input_shape: tuple[int, ...] | None = None


class Runner(abc.ABC):
    """One way of timing a model on the device. ``name`` is recorded as the result's ``runtime``."""

    name: str
    abi: str | None = None  # required ABI, e.g. "arm64-v8a"; None = any

    @abc.abstractmethod
    def files(self) -> list[tuple[pathlib.Path, str]]:
        """(local path, name relative to workdir) to push; may be empty. Pushed once, reused while hashes match."""

    @abc.abstractmethod
    def command(self, spec: RunSpec) -> str:
        """Shell command run in ``spec.workdir``; its stdout+stderr is captured to a file by the harness."""

    @abc.abstractmethod
    def parse(self, output: str) -> list[float]:
        """Per-inference milliseconds; raise RunnerOutputError (clear message) on malformed output."""


RunnerFactory = Callable[[str | None], Runner]

_REGISTRY: dict[str, RunnerFactory] = {}

# Modules that register built-in runners; imported lazily so a missing optional one never breaks the others.
BUILTIN_MODULES = (
    "android_bench.runners.ort_python",
    "android_bench.runners.ort_c",
    "android_bench.runners.official",
)
_loaded = False


def register_runner(prefix: str, factory: RunnerFactory) -> None:
    """Make ``prefix`` and ``prefix:ARG`` resolve to ``factory(None)`` and ``factory("ARG")``."""
    if not prefix or ":" in prefix:
        raise ValueError(f"runner prefix must be non-empty and contain no ':' (got {prefix!r})")
    _REGISTRY[prefix] = factory


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                log.warning("runner module %s could not be imported: %s", module, exc)
        except Exception as exc:  # a broken optional runner must not hide the others
            log.warning("runner module %s failed to load: %s", module, exc)


def known_runners() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_runner(name: str) -> Runner:
    """Resolve ``name`` (``kind`` or ``kind:ARG``) to a runner; unknown names list the known ones."""
    _load_builtins()
    kind, sep, arg = name.partition(":")
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise UnknownRunnerError(
            f"unknown runner {name!r}: known runners are {', '.join(known_runners()) or '(none)'} "
            "(use NAME or NAME:PATH)"
        )
    return factory(arg if sep else None)
