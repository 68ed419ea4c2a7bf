"""`edgeprune bench --device adb` end to end against the loopback ADB device (the real ADB wire protocol).

The qemu test runs the loopback device in a private mount namespace with an ARM /proc/cpuinfo, so the arm64 ort-c
bundle it executes (through qemu-aarch64) is exactly what a phone would run from /data/local/tmp.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from adb_loopback.fixtures import adb_home, device, make_device, onnx_models, private_home  # noqa: F401
from edgeprune.cli import main

TESTS = pathlib.Path(__file__).parent
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def _bench_json(capsys, argv) -> dict:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


def test_bench_device_adb_python_runner(device, onnx_models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    captured = _bench_json(capsys, [
        "bench", str(onnx_models["slim"]), "--baseline", str(onnx_models["dense"]), "--device", "adb",
        "--serial", device.serial, "--runs", "50", "--warmup", "2", "--cooldown-seconds", "1",
        "--runner", "python-ort", "--json", str(out)])
    data = json.loads(out.read_text())
    models = {m["label"] if "label" in m else name: m for name, m in data["models"].items()} \
        if isinstance(data["models"], dict) else {m["label"]: m for m in data["models"]}
    assert len(models) == 2
    for m in models.values():
        samples = m["samples_ms"]
        assert m["runs"] == 50 and len(samples) == 50 and all(s > 0 for s in samples)
        assert min(samples) == pytest.approx(m["min_ms"]) and max(samples) == pytest.approx(m["max_ms"])
        assert m["threads"] == 4  # one per big core of the loopback's Kirin-970-like layout
    assert data["speedup"]["median"] > 0
    dev = json.dumps(data)
    assert "EML-L29" in dev and "kirin970" in dev
    assert "EML-L29" in captured.out or "slim" in captured.out


def test_bench_device_adb_errors_are_one_line(make_device, onnx_models, tmp_path, capsys):
    from adb_loopback.server import Faults

    dev = make_device(faults=Faults(refuse_auth=True))
    rc = main(["bench", str(onnx_models["slim"]), "--device", "adb", "--serial", dev.serial, "--runs", "5",
               "--runner", "python-ort", "--cooldown-seconds", "0", "--auth-timeout", "2"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and "Allow" in errors[0]
    rc = main(["bench", str(onnx_models["slim"]), "--device", "adb", "--serial", "127.0.0.1:1", "--runs", "5",
               "--runner", "python-ort", "--cooldown-seconds", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: ") and "\n" not in err
    assert main(["bench", str(onnx_models["slim"]), "--device", "adb", "--cores", "zz"]) == 1
    assert "--cores must be big, prime, all or a hexadecimal CPU mask" in capsys.readouterr().err
    assert main(["bench", str(onnx_models["slim"]), "--device", "cpu", "--serial", "x:1"]) == 1
    assert "apply to --device adb only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def arm64_bundle():
    from android_bench.runner_build import RunnerBuildError, build_bundle

    cache = pathlib.Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])  # set for the whole run by conftest.py
    try:
        return build_bundle("arm64", cache)
    except RunnerBuildError as exc:
        if "cross toolchain is missing" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.fixture
def arm_device_in_namespace(tmp_path, private_home):
    """A loopback device process whose world has an ARM /proc/cpuinfo and runs aarch64 code through qemu."""
    if QEMU is None or shutil.which("unshare") is None:
        pytest.skip("qemu-aarch64 or unshare is not installed")
    from test_runner_arm64 import ARM_CPUINFO

    fake = tmp_path / "cpuinfo"
    fake.write_text(ARM_CPUINFO)
    launcher = (
        "import sys; sys.path.insert(0, %r)\n"
        "from adb_loopback.sandbox import Sandbox\n"
        "from adb_loopback.server import LoopbackAdbDevice\n"
        "d = LoopbackAdbDevice(Sandbox(__import__('pathlib').Path(%r)))\n"
        "d.start(); print(d.port, flush=True); sys.stdin.read(); d.stop()\n"
    ) % (str(TESTS), str(tmp_path / "phone"))
    script = f"mount --bind {fake} /proc/cpuinfo && exec {sys.executable} -c \"$LAUNCHER\""
    env = dict(os.environ, EDGEPRUNE_RUNNER_EMULATOR=QEMU, LAUNCHER=launcher)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        err = proc.stderr.read()
        if "Operation not permitted" in err or "unshare failed" in err:
            pytest.skip(f"cannot make a private mount namespace here: {err.strip().splitlines()[-1]}")
        raise AssertionError(f"loopback device did not start: {err}")
    yield f"127.0.0.1:{line}"
    proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.qemu
@pytest.mark.slow
def test_bench_device_adb_runs_the_arm64_bundle_under_qemu(arm64_bundle, arm_device_in_namespace, tmp_path,
                                                           capsys):
    import torch

    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.models import create_model

    # Checkpoints go through the same path users take: exported to ONNX on the host, pushed, run by the C runner.
    torch.manual_seed(0)
    dense = create_model("tiny-cnn")
    slim = create_model("tiny-mlp")
    save_checkpoint(tmp_path / "dense.pt", dense, meta={"input_shape": [1, 8, 8]})
    save_checkpoint(tmp_path / "slim.pt", slim, meta={"input_shape": [1, 4, 4]})
    out = tmp_path / "bench.json"
    _bench_json(capsys, [
        "bench", str(tmp_path / "slim.pt"), "--baseline", str(tmp_path / "dense.pt"), "--device", "adb",
        "--serial", arm_device_in_namespace, "--runs", "20", "--warmup", "1", "--cooldown-seconds", "0",
        "--runner", f"ort-c:{arm64_bundle}", "--json", str(out)])
    data = json.loads(out.read_text())
    models = data["models"] if isinstance(data["models"], list) else list(data["models"].values())
    assert len(models) == 2
    for m in models:
        assert m["runtime"] == "ort-c" and m["runs"] == 20 and len(m["samples_ms"]) == 20
        assert all(s > 0 for s in m["samples_ms"])


def test_devices_describes_a_phone(device, capsys):
    assert main(["devices", device.serial]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["manufacturer"], record["model"], record["sdk"]) == ("HUAWEI", "EML-L29", "27")
    assert record["big_cores"] == [4, 5, 6, 7]
    assert main(["devices", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_throttling_and_cooldown_reach_bench_json_and_the_output(device, onnx_models, tmp_path, capsys):
    device.sandbox.set_max_freq(5, 1_200_000)  # the thermal governor capped cpu5
    device.sandbox.set_cur_freq(5, 1_200_000)
    for zone in range(3):  # nothing readable as a temperature: cool-down cannot be checked
        (device.sandbox.root / f"sys/class/thermal/thermal_zone{zone}/temp").write_text("\n")
    (device.sandbox.root / "sys/class/power_supply/battery/temp").write_text("\n")
    out = tmp_path / "bench.json"
    captured = _bench_json(capsys, [
        "bench", str(onnx_models["slim"]), "--device", "adb", "--serial", device.serial, "--runs", "20",
        "--warmup", "0", "--cooldown-seconds", "1", "--runner", "python-ort", "--json", str(out)])
    thermal = json.loads(out.read_text())["device"]["thermal"]
    assert thermal["throttled"] is True
    model = thermal["models"]["slim.onnx"]
    assert model["throttled_blocks"] == [0] and model["freq_samples"] and model["freq_khz"][0]["5"]["max"] == 1_200_000
    assert model["cooldown_reached"] == [None] and thermal["cooldown"]["unchecked"] == 1
    assert "THROTTLED" in captured.out and "cool-down not checked" in captured.out
