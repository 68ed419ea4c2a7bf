"""Shared test configuration: quiet progress bars, small thread counts, the real-data marker."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("EDGEPRUNE_PROGRESS", "0")


def _isolate_home() -> Path:
    """Point every home-derived location at a fresh folder for the whole test run, before any test module is
    imported: the suite must never read or write the real home (an adb key, a cached runner bundle or dataset left
    there by an earlier run would make results depend on the machine's history).

    The ort-c runner bundle cache is the one thing shared between runs, and it is named explicitly:
    ``$EDGEPRUNE_RUNNER_CACHE``, by default the checkout's own ``.cache/runner`` (gitignored; what scripts/test.sh
    uses too). The suite builds the bundles there on first use; they are keyed by the runner's source hash and the
    ORT version, so a stale one is rebuilt, never reused.
    """
    root = Path(tempfile.mkdtemp(prefix="edgeprune-tests-"))
    home = root / "home"
    home.mkdir()
    os.environ["HOME"] = str(home)
    for var, sub in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("MPLCONFIGDIR", ".config/matplotlib")):
        os.environ[var] = str(home / sub)
    os.environ["ANDROID_USER_HOME"] = str(home / ".android")  # adb's key folder (platform-tools ≥ 33)
    os.environ["ANDROID_SDK_HOME"] = str(home)  # older adb: $ANDROID_SDK_HOME/.android
    for var in ("ANDROID_SERIAL", "ANDROID_ADB_SERVER_ADDRESS", "ANDROID_ADB_SERVER_PORT", "ADB_VENDOR_KEYS",
                "EDGEPRUNE_DATA"):
        os.environ.pop(var, None)
    os.environ.setdefault("EDGEPRUNE_RUNNER_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "runner"))
    return root


SESSION_ROOT = _isolate_home()


def _restore_ctrl_c() -> None:
    """Ctrl-C is Python's KeyboardInterrupt in this process and in the CLIs it starts, however the suite was
    launched: a shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays
    ignored across exec, which would make the Ctrl-C tests measure the launcher instead of edgeprune."""
    import signal

    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)


_restore_ctrl_c()


def pytest_report_header(config):
    return [f"isolated HOME: {os.environ['HOME']}; runner bundle cache: {os.environ['EDGEPRUNE_RUNNER_CACHE']}"]


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)


def runner_cache_dir() -> Path:
    """Where the ort-c runner bundles of this test run live (see :func:`_isolate_home`)."""
    return Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fmnist_available() -> bool:
    return all((FMNIST_DIR / f"{n}.gz").exists() or (FMNIST_DIR / n).exists() for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def pytest_collection_modifyitems(config, items):
    if fmnist_available():
        return
    skip = pytest.mark.skip(reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test also gets a cache folder of its own (datasets, bundles it builds into the default place)."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("EDGEPRUNE_DATA", raising=False)


@pytest.fixture(scope="session")
def runner_cache() -> Path:
    return runner_cache_dir()


@pytest.fixture(scope="session")
def native_ort_c_bundle(runner_cache) -> Path:
    """The x86_64 ort-c runner bundle, built once per cache by the suite itself (pip download of the onnxruntime
    wheel and npm pack of ORT's headers from the package registries, then a native gcc build)."""
    import sys

    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("the native ort-c runner builds on x86_64 Linux only (this machine cannot run it)")
    from android_bench.runner_build import build_bundle

    return build_bundle("x86_64", runner_cache)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny tensors on 2 shared cores: one intra-op thread is faster than several fighting ones."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
