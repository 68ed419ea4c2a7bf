"""The arm64 runner bundle: aarch64 ELF files, a complete glibc closure, and a real run under qemu-aarch64.

Under qemu-user, ONNX Runtime's CPU detection reads the host's x86 /proc/cpuinfo and crashes, so each run happens in
a private mount namespace with an ARM-format cpuinfo bind-mounted over /proc/cpuinfo.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from android_bench.runner_build import ARM64_LOADER, ELF_MACHINE, RunnerBuildError, build_bundle, bundle_files
from android_bench.runners import RunSpec, get_runner
from android_bench.runners.ort_c import OrtCRunner, parse_report

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd0b
CPU revision\t: 1

"""


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])  # set for the whole run by conftest.py


def _make_model(path: pathlib.Path) -> pathlib.Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(8).astype(np.float32)
    g = rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["logits"], transB=1)],
        "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"), numpy_helper.from_array(g, "G")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def arm64_bundle() -> pathlib.Path:
    t0 = time.monotonic()
    try:
        path = build_bundle("arm64", _cache_dir())
    except RunnerBuildError as exc:
        if "cross toolchain is missing" in str(exc):  # not root, so it could not be apt-get installed
            pytest.skip(str(exc))
        raise
    print(f"arm64 bundle {path} ready in {time.monotonic() - t0:.1f}s")
    return path


@pytest.fixture(scope="session")
def qemu_sandbox(tmp_path_factory):
    """A function running a shell command in a private mount namespace with an ARM cpuinfo, under qemu."""
    if QEMU is None:
        pytest.skip("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    fake = tmp_path_factory.mktemp("cpuinfo") / "cpuinfo"
    fake.write_text(ARM_CPUINFO)
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount --bind {fake} /proc/cpuinfo && grep -q 'CPU implementer' /proc/cpuinfo"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount a fake /proc/cpuinfo in a private mount namespace (needs root): "
                    f"{probe.stderr.strip()}")

    def run(command: str, cwd: pathlib.Path, timeout: int = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, EDGEPRUNE_RUNNER_EMULATOR=QEMU)
        script = f"mount --bind {fake} /proc/cpuinfo && cd {cwd} && {command}"
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, env=env, timeout=timeout)

    return run


def _elf(path: pathlib.Path) -> tuple[int, int, int]:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not ELF"
    return head[4], head[5], int.from_bytes(head[18:20], "little")  # class, data (endianness), machine


def test_bundle_files_are_aarch64_elf(arm64_bundle):
    files = bundle_files(arm64_bundle)
    names = {p.as_posix() for p in files}
    assert {"run.sh", "edgeprune_ort_runner", f"lib/{ARM64_LOADER}", "lib/libonnxruntime.so.1", "lib/libc.so.6",
            "lib/libstdc++.so.6", "lib/libgcc_s.so.1", "lib/libm.so.6"} <= names
    for rel in files:
        if rel.name == "run.sh":
            continue
        assert _elf(arm64_bundle / rel) == (2, 1, ELF_MACHINE["arm64"]), rel  # ELFCLASS64, little endian, EM_AARCH64
    run_sh = (arm64_bundle / "run.sh").read_text()
    assert f'"$d/lib/{ARM64_LOADER}" --library-path "$d/lib" "$d/edgeprune_ort_runner" "$@"' in run_sh


def test_bundle_carries_every_needed_library(arm64_bundle):
    readelf = shutil.which("aarch64-linux-gnu-readelf") or shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    present = {p.name for p in (arm64_bundle / "lib").iterdir()}
    for elf in [arm64_bundle / "edgeprune_ort_runner", *(arm64_bundle / "lib").iterdir()]:
        out = subprocess.run([readelf, "-d", str(elf)], capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
        assert needed <= present, f"{elf.name} needs {needed - present}, missing from the bundle"


def test_runs_under_qemu_and_matches_python(arm64_bundle, qemu_sandbox, tmp_path):
    import onnxruntime as ort

    model = _make_model(tmp_path / "m.onnx")
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = qemu_sandbox(f"sh {arm64_bundle}/run.sh --model m.onnx --runs 20 --warmup 2 --threads 1 "
                        "--input-shape 2,3,8,8 --input in.bin --dump-output out.bin", tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = parse_report(proc.stdout)
    assert len(report.samples_ms) == 20 and report.complete
    assert report.inputs == {"x": (2, 3, 8, 8)} and report.outputs[0].shape == (2, 10)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"x": x})[0]
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_runner_class_files_command_parse_under_qemu(arm64_bundle, qemu_sandbox, tmp_path):
    """What the ADB harness does, with a local folder as the device: push files(), run command(), parse()."""
    runner = get_runner(f"ort-c:{arm64_bundle}")
    assert isinstance(runner, OrtCRunner) and runner.name == "ort-c" and runner.abi == "arm64-v8a"
    workdir = tmp_path / "device"
    for local, remote in runner.files():
        dest = workdir / remote
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)  # no mode bits: command() must make the files executable itself
    _make_model(workdir / "model.onnx")
    spec = RunSpec(model_remote="model.onnx", runs=15, warmup=2, threads=1, cores="1", workdir=str(workdir),
                   input_shape=(1, 3, 8, 8))
    proc = qemu_sandbox(runner.command(spec), workdir)
    assert proc.returncode == 0, proc.stderr
    samples = runner.parse(proc.stdout)
    assert len(samples) == 15 and all(s > 0 for s in samples)


def test_qemu_run_reports_model_errors(arm64_bundle, qemu_sandbox, tmp_path):
    proc = qemu_sandbox(f"sh {arm64_bundle}/run.sh missing.onnx", tmp_path)
    assert proc.returncode == 1
    assert "error: cannot load model missing.onnx: No such file or directory" in proc.stderr
