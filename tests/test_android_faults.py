"""Each fault gives its typed, one-line error, and whatever was measured before it is saved."""

from __future__ import annotations

import dataclasses
import json
import socket
import time

import pytest

from adb_loopback import Faults
from adb_loopback.fixtures import adb_home, device, make_device, onnx_models, private_home  # noqa: F401
from android_bench._io import sha256_file
from android_bench.bench import run_benchmark
from android_bench.errors import (
    AbiMismatchError,
    AndroidBenchError,
    BenchTimeoutError,
    DeviceDisconnectedError,
    DeviceNotFoundError,
    DeviceUnauthorizedError,
    NoSpaceError,
    RunnerCrashError,
)
from android_bench.runners.base import get_runner, register_runner
from android_bench.runners.ort_python import PythonOrtRunner


def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def _launch_match(model_path) -> bytes:
    """Substring of the command that starts the runner on ``model_path`` (and of no other command)."""
    return f"--model /data/local/tmp/edgeprune/models/{sha256_file(model_path)[:16]}".encode()


def test_missing_device(private_home, onnx_models, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DeviceNotFoundError) as info:
        run_benchmark([onnx_models["slim"]], f"127.0.0.1:{port}", runs=5, progress=False,
                      partial_path=tmp_path / "p.json")
    assert f"127.0.0.1:{port}" in _one_line(info.value)
    assert not (tmp_path / "p.json").exists()  # nothing was measured, nothing to save


def test_unauthorized_device_asks_to_accept_the_prompt(make_device, onnx_models):
    dev = make_device(faults=Faults(refuse_auth=True))
    with pytest.raises(DeviceUnauthorizedError) as info:
        run_benchmark([onnx_models["slim"]], dev.serial, runs=5, progress=False, auth_timeout_s=1.0)
    assert "Allow USB debugging" in _one_line(info.value)
    assert ("auth", "refused") in dev.events_of("auth")


def test_disconnect_mid_run_retries_the_block_once(make_device, onnx_models):
    # Cut the connection right after the runner for "slim" was started (the launch's output acknowledgement).
    dev = make_device(faults=Faults(drop_match=_launch_match(onnx_models["slim"]), drop_after_messages=1))
    result = run_benchmark([onnx_models["slim"]], dev.serial, runs=50, warmup=0, cooldown_seconds=1,
                           baseline=onnx_models["dense"], progress=False)
    assert dev.events_of("drop")
    by_name = {r["model"]: r for r in result["results"]}
    assert by_name["slim.onnx"]["retried"] is True and by_name["dense.onnx"]["retried"] is False
    assert by_name["slim.onnx"]["runs"] == 50 and by_name["dense.onnx"]["runs"] == 50
    assert result["reconnects"] >= 1


def test_disconnect_while_polling_reconnects_without_rerunning(make_device, onnx_models):
    # Drop 3 messages after the launch: inside the first poll, an idempotent command that is simply repeated.
    dev = make_device(faults=Faults(drop_match=_launch_match(onnx_models["slim"]), drop_after_messages=3))
    result = run_benchmark([onnx_models["slim"]], dev.serial, runs=30, warmup=0, cooldown_seconds=1, progress=False)
    res = result["results"][0]
    assert dev.events_of("drop") and result["reconnects"] >= 1
    assert res["retried"] is False and res["runs"] == 30


def test_disconnect_twice_gives_up_and_keeps_what_was_measured(make_device, onnx_models, tmp_path):
    dev = make_device(faults=Faults(drop_match=_launch_match(onnx_models["slim"]), drop_after_messages=1,
                                    drop_times=2))
    partial = tmp_path / "partial.json"
    with pytest.raises(DeviceDisconnectedError) as info:
        run_benchmark([onnx_models["slim"]], dev.serial, runs=40, warmup=0, cooldown_seconds=1,
                      baseline=onnx_models["dense"], partial_path=partial, progress=False)
    assert str(partial) in _one_line(info.value) and info.value.partial_path == partial
    saved = json.loads(partial.read_text())
    assert saved["partial"] is True and "lost the connection" in saved["error"]
    by_name = {r["model"]: r for r in saved["results"]}
    assert by_name["dense.onnx"]["runs"] == 20 and len(by_name["dense.onnx"]["samples_ms"]) == 20  # block 1 of 2
    assert by_name["slim.onnx"]["runs"] == 0
    assert saved["device"]["model"] == "EML-L29"


def test_no_space_on_device(make_device, onnx_models, tmp_path):
    dev = make_device(faults=Faults(disk_quota_bytes=1000))
    partial = tmp_path / "partial.json"
    with pytest.raises(NoSpaceError) as info:
        run_benchmark([onnx_models["dense"]], dev.serial, runs=5, progress=False, partial_path=partial)
    assert "space" in _one_line(info.value)
    assert dev.events_of("push-failed")
    saved = json.loads(partial.read_text())
    assert saved["partial"] is True and saved["device"]["model"] == "EML-L29"


def test_wrong_abi_is_refused_before_pushing(make_device, onnx_models):
    class Arm64Runner(PythonOrtRunner):
        name = "python-ort-arm64"
        abi = "arm64-v8a"

    register_runner("test-arm64", lambda arg: Arm64Runner(arg))
    dev = make_device(abi32=True)
    with pytest.raises(AbiMismatchError) as info:
        run_benchmark([onnx_models["slim"]], dev.serial, runner="test-arm64", runs=5, progress=False)
    text = _one_line(info.value)
    assert "arm64-v8a" in text and "armeabi-v7a" in text
    assert dev.events_of("push") == []
    assert isinstance(get_runner("test-arm64"), Arm64Runner)


def test_runner_crash_shows_its_output(device, onnx_models, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx file")
    partial = tmp_path / "partial.json"
    with pytest.raises(RunnerCrashError) as info:
        run_benchmark([onnx_models["slim"], broken], device.serial, runs=10, warmup=0, cooldown_seconds=1,
                      progress=False, partial_path=partial)
    text = _one_line(info.value)
    assert "exited with code" in text and ("INVALID_PROTOBUF" in text or "Load model" in text or "protobuf" in text)
    saved = json.loads(partial.read_text())
    assert [r["runs"] for r in saved["results"]] == [10, 0]


def test_timeout_stops_the_runner(device, onnx_models, tmp_path):
    with pytest.raises(BenchTimeoutError) as info:
        run_benchmark([onnx_models["slim"]], device.serial, runs=10_000_000, warmup=0, cooldown_seconds=1,
                      timeout_s=2.0, progress=False, partial_path=tmp_path / "p.json")
    assert "did not finish within 2 s" in _one_line(info.value)
    from android_bench.transport import AdbConnection

    with AdbConnection(device.serial) as conn:
        out, _ = conn.run("pgrep -f 'ort_python_scrip[t]' || echo none")
    assert out.strip() == "none"


def test_all_errors_share_the_base_class():
    for cls in (AbiMismatchError, BenchTimeoutError, DeviceDisconnectedError, DeviceNotFoundError,
                DeviceUnauthorizedError, NoSpaceError, RunnerCrashError):
        assert issubclass(cls, AndroidBenchError)


class _StuckRunner(PythonOrtRunner):
    """python-ort whose run on one chosen model practically never ends, so an interrupt lands mid-block."""

    name = "python-ort-stuck"

    def __init__(self, stuck_remote_suffix: str):
        super().__init__()
        self.stuck = stuck_remote_suffix

    def command(self, spec):
        if spec.model_remote.endswith(self.stuck):
            spec = dataclasses.replace(spec, runs=50_000_000)
        return super().command(spec)


def test_ctrl_c_stops_the_runner_and_keeps_results(device, onnx_models, tmp_path):
    import _thread
    import threading

    from android_bench.transport import AdbConnection

    stuck = sha256_file(onnx_models["dense"])[:16] + ".onnx"
    register_runner("test-stuck", lambda arg: _StuckRunner(stuck))
    partial = tmp_path / "partial.json"
    second_block_pid = device.sandbox.root / "data/local/tmp/edgeprune/out/b1_a0.pid"
    stop = threading.Event()

    def ctrl_c_once_second_block_runs():
        while not stop.is_set():
            if second_block_pid.exists():
                time.sleep(0.3)
                _thread.interrupt_main()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=ctrl_c_once_second_block_runs)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_benchmark([onnx_models["slim"], onnx_models["dense"]], device.serial, runner="test-stuck", runs=300,
                          warmup=0, cooldown_seconds=1, progress=False, partial_path=partial, timeout_s=60,
                          rounds=1)
    finally:
        stop.set()
        watcher.join()
    saved = json.loads(partial.read_text())
    assert saved["partial"] is True and saved["error"].startswith("KeyboardInterrupt")
    assert [r["runs"] for r in saved["results"]] == [300, 0]
    with AdbConnection(device.serial) as conn:
        out, _ = conn.run("pgrep -f 'ort_python_scrip[t]' || echo none")
    assert out.strip() == "none"


def test_link_that_goes_silent_times_out_and_the_block_is_rerun(make_device, onnx_models):
    # A Wi-Fi drop: the device stops answering right at the launch, the socket stays open. The launch times out,
    # which is retried like a reset: reconnect, stop whatever may have started, run the block again.
    dev = make_device(faults=Faults(drop_match=_launch_match(onnx_models["slim"]), drop_after_messages=0,
                                    silence=True))
    started = time.monotonic()
    result = run_benchmark([onnx_models["slim"]], dev.serial, runs=20, warmup=0, cooldown_seconds=1, progress=False,
                           link_timeout_s=1.5)
    res = result["results"][0]
    assert dev.events_of("drop") and res["retried"] is True and res["runs"] == 20
    assert result["reconnects"] >= 1 and time.monotonic() - started < 40


def test_no_space_reported_before_done_as_adbd_does(make_device, onnx_models, tmp_path):
    dev = make_device(faults=Faults(disk_quota_bytes=1000, fail_early=True))
    partial = tmp_path / "partial.json"
    with pytest.raises(NoSpaceError) as info:
        run_benchmark([onnx_models["dense"]], dev.serial, runs=5, progress=False, partial_path=partial)
    assert "No space left on device" in _one_line(info.value)
    assert json.loads(partial.read_text())["device"]["model"] == "EML-L29"
