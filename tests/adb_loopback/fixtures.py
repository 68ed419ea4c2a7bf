"""pytest fixtures: a loopback device per test, a private HOME with one adb key per session, tiny ONNX models.

Import them into a test module (``from adb_loopback.fixtures import ...``); pytest picks fixtures up from there.
"""

from __future__ import annotations

import pathlib

import pytest

from .sandbox import Sandbox
from .server import Faults, LoopbackAdbDevice


@pytest.fixture(scope="session")
def adb_home(tmp_path_factory) -> pathlib.Path:
    """A HOME whose ~/.android/adbkey is created once per session (keygen takes a moment)."""
    from android_bench.transport import ensure_adb_key

    home = tmp_path_factory.mktemp("adb-home")
    ensure_adb_key(home / ".android" / "adbkey")
    return home


@pytest.fixture
def private_home(adb_home, monkeypatch) -> pathlib.Path:
    monkeypatch.setenv("HOME", str(adb_home))
    return adb_home


@pytest.fixture
def make_device(tmp_path, private_home):
    """Factory: ``make_device(faults=..., abi32=..., pty=..., maxdata=...)`` → started LoopbackAdbDevice; all
    stopped at teardown."""
    started: list[LoopbackAdbDevice] = []

    def _make(*, faults: Faults | None = None, abi32: bool = False, pty: bool = False,
              maxdata: int | None = None, props: dict | None = None, machine: str | None = None) -> LoopbackAdbDevice:
        sandbox = Sandbox(tmp_path / f"phone{len(started)}", abi32=abi32, props=props, machine=machine)
        dev = LoopbackAdbDevice(sandbox, faults=faults, pty=pty, **({"maxdata": maxdata} if maxdata else {}))
        dev.start()
        started.append(dev)
        return dev

    yield _make
    for dev in started:
        dev.stop()


@pytest.fixture
def device(make_device) -> LoopbackAdbDevice:
    return make_device()


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Two tiny MLPs exported with the legacy exporter: ``dense`` (64 hidden) and ``slim`` (8 hidden)."""
    import warnings

    import torch

    out = tmp_path_factory.mktemp("models")
    paths = {}
    torch.manual_seed(0)
    for name, hidden in (("dense", 64), ("slim", 8)):
        model = torch.nn.Sequential(torch.nn.Linear(16, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)).eval()
        path = out / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 16),), str(path), dynamo=False)
        paths[name] = path
    return paths
