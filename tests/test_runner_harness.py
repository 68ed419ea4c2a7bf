"""The ort-c runner through the real ADB harness (run_benchmark) against the loopback device.

The loopback "phone" runs commands on this x86_64 host, so it presents itself as an x86_64 device (as an emulator
image does) and takes the native x86_64 bundle (``ort-c:<bundle folder>``, whose ABI the runner reads from the
bundle): this checks files() are pushed under the work dir, command() runs there with the pinning mask, and parse()
reads the real runner's output, end to end; and that an arm64 phone refuses the x86_64 bundle.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from adb_loopback.fixtures import adb_home, device, make_device, onnx_models, private_home  # noqa: F401
from android_bench.bench import run_benchmark
from android_bench.runner_build import build_bundle, bundle_files
from android_bench.runners import get_runner

X86_64_DEVICE = {"ro.product.cpu.abi": "x86_64", "ro.product.cpu.abilist": "x86_64,arm64-v8a",
                 "ro.product.cpu.abilist64": "x86_64,arm64-v8a"}
"""An x86_64 device (as an emulator image): what the loopback phone really runs, so the native bundle fits it."""


pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="the native runner build is x86_64 Linux only")


@pytest.fixture(scope="module")
def native_bundle() -> pathlib.Path:
    cache = pathlib.Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])  # set for the whole run by conftest.py
    return build_bundle("x86_64", cache)


@pytest.fixture
def device(make_device):  # noqa: F811  (an x86_64 phone in place of the default arm64 one)
    return make_device(props=X86_64_DEVICE, machine="x86_64")


def test_ort_c_through_run_benchmark(device, onnx_models, native_bundle):
    runner = get_runner(f"ort-c:{native_bundle}")
    result = run_benchmark([onnx_models["slim"]], device.serial, runner=runner, runs=60, warmup=3,
                           cooldown_seconds=1, baseline=onnx_models["dense"], keep=True, progress=False)
    pushed = {p.rsplit("/edgeprune/", 1)[-1] for p in result["pushed"]}
    assert {f"ort_c/{p.as_posix()}" for p in bundle_files(native_bundle)} <= pushed
    by_name = {r["model"]: r for r in result["results"]}
    for name in ("dense.onnx", "slim.onnx"):
        res = by_name[name]
        assert res["runtime"] == "ort-c" and res["runs"] == 60 and len(res["samples_ms"]) == 60
        assert all(0 < s < 1000 for s in res["samples_ms"]) and res["complete"]
    assert set(device.sandbox.taskset_masks()) == {"f0"}
    workdir = device.sandbox.root / "data/local/tmp/edgeprune/ort_c"
    assert os.access(workdir / "edgeprune_ort_runner", os.X_OK) and (workdir / "lib/libonnxruntime.so.1").is_file()


def test_an_x86_64_bundle_is_refused_by_an_arm64_phone(make_device, onnx_models, native_bundle):
    from android_bench.errors import AndroidBenchError

    phone = make_device()  # the default loopback phone: arm64-v8a
    assert get_runner(f"ort-c:{native_bundle}").abi == "x86_64"
    with pytest.raises(AndroidBenchError, match="needs x86_64 but .*primary ABI is arm64-v8a"):
        run_benchmark([onnx_models["slim"]], phone.serial, runner=f"ort-c:{native_bundle}", runs=5, warmup=0,
                      cooldown_seconds=0, progress=False)
