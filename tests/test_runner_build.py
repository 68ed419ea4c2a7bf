"""The bundle builder: fresh builds into an empty bundle folder, rebuild on a changed C source, the CLI script."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from android_bench import runner_build
from android_bench.runner_build import RunnerBuildError, build_bundle, bundle_size, default_ort_version

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="the native runner build is x86_64 Linux only")


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])  # set for the whole run by conftest.py


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory) -> pathlib.Path:
    """An empty bundle cache whose downloads/ holds the headers already fetched (no second 150 MB npm pack)."""
    build_bundle("x86_64", _cache_dir())  # make sure the shared downloads exist
    cache = tmp_path_factory.mktemp("runner_cache")
    shutil.copytree(_cache_dir() / "downloads", cache / "downloads",
                    ignore=shutil.ignore_patterns("*.so", "*.origin", "*.part", "tmp*"))
    return cache


def test_fresh_build_records_sources(seeded_cache):
    path = build_bundle("x86_64", seeded_cache)
    assert path == seeded_cache / f"{default_ort_version()}-x86_64"
    info = json.loads((path / "BUNDLE.json").read_text())
    assert info["arch"] == "x86_64" and info["ort_version"] == default_ort_version()
    assert info["headers"] == f"npm {runner_build.HEADERS_NPM_PACKAGE}@{runner_build.HEADERS_NPM_VERSION}"
    assert info["api_version_header"] >= 4
    assert info["source_sha256"] == runner_build.source_sha256()
    assert info["files"]["lib/libonnxruntime.so.1"] == (path / "lib/libonnxruntime.so.1").stat().st_size
    out = subprocess.run(["sh", str(path / "run.sh"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("EDGEPRUNE_RUNNER 1\nORT_VERSION ")
    size = bundle_size(path)
    assert size["raw"] == sum(v for k, v in info["files"].items()) and 0 < size["gzip"] < size["raw"]


def test_changed_source_triggers_rebuild(seeded_cache, tmp_path, monkeypatch):
    first = build_bundle("x86_64", seeded_cache)
    old = json.loads((first / "BUNDLE.json").read_text())["source_sha256"]
    changed = tmp_path / "edgeprune_ort_runner.c"
    changed.write_text(runner_build.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(runner_build, "SOURCE", changed)
    again = build_bundle("x86_64", seeded_cache)
    new = json.loads((again / "BUNDLE.json").read_text())["source_sha256"]
    assert again == first and new != old and new == runner_build.source_sha256()


def test_damaged_bundle_is_rebuilt(seeded_cache):
    path = build_bundle("x86_64", seeded_cache)
    (path / "lib/libonnxruntime.so.1").write_bytes(b"truncated")
    again = build_bundle("x86_64", seeded_cache)
    assert (again / "lib/libonnxruntime.so.1").stat().st_size > 1_000_000


def test_unknown_arch_refused():
    with pytest.raises(RunnerBuildError, match="unknown runner arch 'armv7'.*arm64, x86_64"):
        build_bundle("armv7")


def test_build_script_prints_bundle_and_size():
    env = dict(os.environ, EDGEPRUNE_RUNNER_CACHE=str(_cache_dir()))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/build_runner.py"), "--arch", "x86_64", "--size", "-q"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    arch, path, raw, gz = proc.stdout.strip().split("\t")
    assert arch == "x86_64" and pathlib.Path(path) == _cache_dir() / f"{default_ort_version()}-x86_64"
    assert int(raw.removeprefix("raw=")) > int(gz.removeprefix("gzip=")) > 0
