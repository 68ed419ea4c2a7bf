"""The harness against Debian's AOSP adbd (tests/real_adbd): the whole bench flow and the faults it can produce.

adbd runs in private network, mount and PID namespaces (loopback only, its own /data/local/tmp, an ARM
/proc/cpuinfo and the loopback sandbox's sysfs files bind-mounted, getprop/dumpsys/taskset/uname on its PATH).
The harness joins its network namespace: in-process with setns for run_benchmark, through nsenter for the CLI and
Debian's adb client. Skipped only where a fresh Debian machine lacks something: no fetched adbd, or not root.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from adb_loopback.fixtures import adb_home, onnx_models, private_home  # noqa: F401
from adb_loopback.sandbox import Sandbox
from android_bench.bench import run_benchmark
from android_bench.errors import (
    DeviceDisconnectedError,
    NoSpaceError,
    RunnerCrashError,
    RunnerNotStartedError,
    RunnerTimeoutError,
)
from android_bench.runners.base import register_runner
from android_bench.runners.ort_python import PythonOrtRunner
from real_adbd import RealAdbd, missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

WORK = "/data/local/tmp/edgeprune"


@pytest.fixture
def make_adbd(tmp_path, private_home):
    started: list[RealAdbd] = []

    def _make(**kwargs) -> RealAdbd:
        sandbox = Sandbox(tmp_path / f"phone{len(started)}")
        daemon = RealAdbd(sandbox, tmp_path / f"adbd{len(started)}", **kwargs)
        started.append(daemon)
        return daemon.start()

    yield _make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def adbd(make_adbd) -> RealAdbd:
    return make_adbd()


def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def _adb(daemon: RealAdbd, *args: str) -> str:
    """Debian's adb client inside the namespaces (its server on the namespace's own loopback, ended afterwards and
    in the PID namespace anyway, so it cannot outlive the test)."""
    cmd = (f"adb connect {daemon.serial} >/dev/null; adb -s {daemon.serial} " + " ".join(args)
           + "; adb kill-server >/dev/null 2>&1")
    out = subprocess.run(daemon.ns_command(["sh", "-c", cmd], mount=True), capture_output=True, text=True,
                         timeout=60)
    return out.stdout


@pytest.fixture
def big_model(tmp_path) -> pathlib.Path:
    """An ONNX model of ~260 KB (one 256×256 layer), too big for a 128 KiB /data/local/tmp."""
    import warnings

    import torch

    path = tmp_path / "big.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(256, 256).eval(), (torch.randn(1, 256),), str(path), dynamo=False)
    return path


def test_bench_cli_end_to_end_against_real_adbd(adbd, onnx_models, tmp_path, private_home):
    """`edgeprune bench --device adb` as a user runs it: push, detached runner, poll, pull, statistics."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-c", "import sys; from edgeprune.cli import main; sys.exit(main(sys.argv[1:]))",
            "bench", str(onnx_models["slim"]), "--baseline", str(onnx_models["dense"]), "--device", "adb",
            "--serial", adbd.serial, "--runner", "python-ort", "--runs", "60", "--warmup", "2",
            "--cooldown-seconds", "1", "--cores", "prime", "--keep", "--json", str(out)]
    env = dict(os.environ, HOME=str(private_home), EDGEPRUNE_PROGRESS="0")
    proc = subprocess.run(adbd.ns_command(argv), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    models = data["models"] if isinstance(data["models"], list) else list(data["models"].values())
    assert len(models) == 2 and all(m["runs"] == 60 and len(m["samples_ms"]) == 60 for m in models)
    assert data["speedup"]["median"] > 0
    text = json.dumps(data)
    assert "EML-L29" in text and "kirin970" in text
    # What adbd's shell saw: the prime cluster of the 4+4 Kirin layout (cores 4-7), taskset with that mask.
    assert set(adbd.sandbox.taskset_masks()) == {"f0"}
    # --keep: the files are on the device, as Debian's own adb client sees them.
    listing = _adb(adbd, "shell", f"ls {WORK} {WORK}/models")
    assert "ort_python_script.py" in listing and ".onnx" in listing


def test_device_record_through_real_adbd(adbd):
    from android_bench.devices import describe_device

    with adbd.in_netns():
        record = describe_device(adbd.serial)
    assert (record["model"], record["sdk"], record["machine"]) == ("EML-L29", "27", "aarch64")
    assert record["online_cpus"] == list(range(8)) and record["big_cores"] == [4, 5, 6, 7]
    assert record["thermal_source"] == "thermal_zones" and record["max_temp_c"] == 36.5
    assert record["shell_cpuset"]["cpus_allowed"]  # the shell's own allowed cores are recorded


def test_old_launch_line_loses_the_runner_new_one_starts_it(adbd, tmp_path):
    """The chain `mkdir && cd && rm && nohup … &` dies with its session; the harness's launch does not."""
    from android_bench.bench import _Session
    from android_bench.runners.base import RunSpec
    from android_bench.transport import AdbConnection

    class Sleeper(PythonOrtRunner):
        def command(self, spec):
            return "sleep 30"

    spec = RunSpec(model_remote="-", runs=1, warmup=0, threads=1, cores=None, workdir=WORK)
    old_pid = f"{WORK}/out/old.pid"
    inner = f"echo $$ > {old_pid}; sleep 30"
    old = f"mkdir -p {WORK}/out && cd {WORK} && rm -f {old_pid} && nohup sh -c '{inner}' > /dev/null 2>&1 < /dev/null &"
    with adbd.in_netns(), AdbConnection(adbd.serial) as conn:
        conn.run(old)
        session = _Session(conn, Sleeper(), WORK, tmp_path / "p.json", None)
        conn.run(session.launch_command(spec, "new"))
        time.sleep(3)
        out, _ = conn.run(f"cat {old_pid} 2>/dev/null || echo missing; cat {WORK}/out/new.pid")
        old_line, new_line = out.split()[:2]
        alive, _ = conn.run(f"kill -0 {new_line} && echo alive")
    # Legacy shell: the session's end takes the backgrounded chain with it before it wrote its pid file.
    assert old_line == "missing"
    assert new_line.isdigit() and alive.strip() == "alive"


def test_killed_daemon_that_stays_dead_is_reported_gone(adbd, onnx_models, tmp_path):
    partial = tmp_path / "partial.json"
    register_runner("test-slow", lambda arg: _SlowSecondModel(onnx_models["slim"]))
    killer = _after_block_starts(adbd, "b1_a0", adbd.kill_daemon)
    with adbd.in_netns(), pytest.raises(DeviceDisconnectedError) as info:
        run_benchmark([onnx_models["slim"]], adbd.serial, runner="test-slow", baseline=onnx_models["dense"],
                      runs=20, warmup=0, rounds=1, cooldown_seconds=1, progress=False, partial_path=partial,
                      reconnect_wait_s=2)
    killer.join()
    text = _one_line(info.value)
    assert "is gone" in text and str(partial) in text
    saved = json.loads(partial.read_text())
    assert [r["runs"] for r in saved["results"]] == [20, 0]  # the dense block measured before adbd died is kept


def test_restarted_daemon_is_reconnected_and_the_run_completes(adbd, onnx_models):
    register_runner("test-slow", lambda arg: _SlowSecondModel(onnx_models["slim"]))

    def bounce():
        adbd.kill_daemon()
        time.sleep(1.0)
        adbd.start_daemon()

    bouncer = _after_block_starts(adbd, "b1_a0", bounce)
    with adbd.in_netns():
        result = run_benchmark([onnx_models["slim"]], adbd.serial, runner="test-slow", baseline=onnx_models["dense"],
                               runs=20, warmup=0, rounds=1, cooldown_seconds=1, progress=False, reconnect_wait_s=15)
    bouncer.join()
    assert result["reconnects"] >= 1 and [r["runs"] for r in result["results"]] == [20, 20]


def test_full_disk_as_real_adbd_reports_it(make_adbd, big_model, tmp_path):
    adbd = make_adbd(data_tmpfs_kib=128)
    partial = tmp_path / "partial.json"
    with adbd.in_netns(), pytest.raises(NoSpaceError) as info:
        run_benchmark([big_model], adbd.serial, runner="python-ort", runs=5, progress=False, partial_path=partial)
    text = _one_line(info.value)
    assert "No space left on device" in text and "free space" in text
    assert json.loads(partial.read_text())["device"]["model"] == "EML-L29"


def test_runner_crash_shows_the_runners_error(adbd, onnx_models, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with adbd.in_netns(), pytest.raises(RunnerCrashError) as info:
        run_benchmark([onnx_models["slim"], broken], adbd.serial, runner="python-ort", runs=10, warmup=0,
                      cooldown_seconds=1, progress=False, partial_path=tmp_path / "p.json")
    text = _one_line(info.value)
    assert "exited with code" in text and ("INVALID_PROTOBUF" in text or "protobuf" in text or "Load model" in text)


def test_runner_that_never_starts_says_why(make_adbd, onnx_models, tmp_path):
    # A userland without nohup: the device's own "not found" text is the error.
    bin_dir = tmp_path / "bin-without-nohup"
    bin_dir.mkdir()
    for d in ("/usr/bin", "/bin"):
        for name in os.listdir(d):
            if name != "nohup" and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(pathlib.Path(d) / name)
    sandbox_bin = tmp_path / "phone0" / "bin"
    adbd = make_adbd(extra_env={"PATH": f"{sandbox_bin}:{bin_dir}"})
    with adbd.in_netns(), pytest.raises(RunnerNotStartedError) as info:
        run_benchmark([onnx_models["slim"]], adbd.serial, runner="python-ort", runs=5, warmup=0, cooldown_seconds=1,
                      progress=False, start_timeout_s=2, partial_path=tmp_path / "p.json")
    text = _one_line(info.value)
    assert "never started" in text and "nohup" in text


def test_hung_runner_is_caught_long_before_the_timeout(adbd, onnx_models, tmp_path):
    class Hung(PythonOrtRunner):
        name = "hung"

        def command(self, spec):
            return "sleep 600"

    register_runner("test-hung", lambda arg: Hung())
    started = time.monotonic()
    with adbd.in_netns(), pytest.raises(RunnerTimeoutError) as info:
        run_benchmark([onnx_models["slim"]], adbd.serial, runner="test-hung", runs=5, warmup=0, cooldown_seconds=1,
                      progress=False, stall_s=2, timeout_s=600, partial_path=tmp_path / "p.json")
    assert "no progress" in _one_line(info.value) and time.monotonic() - started < 30
    with adbd.in_netns():
        from android_bench.transport import AdbConnection

        with AdbConnection(adbd.serial) as conn:
            out, _ = conn.run("pgrep -f 'sleep 60[0]' || echo none")
    assert out.strip() == "none"  # stopped on the device too


class _SlowSecondModel(PythonOrtRunner):
    """python-ort that lingers a few seconds before timing ``slow_model``, so a fault lands mid-block."""

    name = "python-ort-slow"

    def __init__(self, slow_model: pathlib.Path):
        super().__init__()
        from android_bench._io import sha256_file

        self.slow = sha256_file(slow_model)[:16]

    def command(self, spec):
        cmd = super().command(spec)
        return f"sleep 4; {cmd}" if self.slow in spec.model_remote else cmd


def _after_block_starts(adbd: RealAdbd, tag: str, action) -> threading.Thread:
    """Run ``action`` once the runner of block ``tag`` has written its pid file on the device."""
    probe = adbd.ns_command(["test", "-s", f"{WORK}/out/{tag}.pid"], mount=True)

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if subprocess.run(probe, capture_output=True).returncode == 0:
                time.sleep(0.5)
                action()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


X86_64_EMULATOR = {"ro.product.model": "sdk_gphone64_x86_64", "ro.product.cpu.abi": "x86_64",
                   "ro.product.cpu.abilist": "x86_64,arm64-v8a", "ro.product.cpu.abilist64": "x86_64,arm64-v8a",
                   "ro.build.version.sdk": "34", "ro.build.version.release": "14"}


def test_ort_c_bundle_through_real_adbd(tmp_path, private_home, onnx_models):
    """The C runner (x86_64 bundle, as on an x86_64 emulator image) pushed, started and timed through adbd."""
    from android_bench.runner_build import RunnerBuildError, build_bundle

    cache = pathlib.Path(os.environ.get("EDGEPRUNE_RUNNER_CACHE") or tmp_path / "runner-cache")
    try:
        bundle = build_bundle("x86_64", cache)
    except RunnerBuildError as exc:
        pytest.fail(f"the x86_64 runner bundle could not be built from the registries: {exc}")
    sandbox = Sandbox(tmp_path / "emulator", props=X86_64_EMULATOR, machine="x86_64")
    with RealAdbd(sandbox, tmp_path / "adbd") as adbd, adbd.in_netns():
        result = run_benchmark([onnx_models["slim"]], adbd.serial, runner=f"ort-c:{bundle}",
                               baseline=onnx_models["dense"], runs=40, warmup=2, cooldown_seconds=1, progress=False)
    assert result["device"]["model"] == "sdk_gphone64_x86_64" and result["runner"] == "ort-c"
    assert result["device"]["machine"] == "x86_64"
    assert [r["runs"] for r in result["results"]] == [40, 40]
    assert all(0 < s < 1000 for r in result["results"] for s in r["samples_ms"])


def test_emulator_and_ipv6_serials_reach_the_daemon(adbd):
    """adbd on 5555 is what adb calls ``emulator-5554``; ``[::1]:5555`` is the IPv6 form of the same daemon."""
    from android_bench.devices import describe_device

    with adbd.in_netns():
        assert describe_device("emulator-5554")["model"] == "EML-L29"
        assert describe_device("[::1]:5555")["model"] == "EML-L29"
    listing = _adb(adbd, "get-state")  # Debian's adb client agrees that the daemon is a device
    assert listing.strip() == "device"


def test_fetch_script_is_idempotent():
    """setup.sh runs scripts/fetch_adbd.sh every time: with adbd in place it checks it and does nothing else."""
    from real_adbd.daemon import REPO, adbd_root

    proc = subprocess.run(["bash", str(REPO / "scripts/fetch_adbd.sh"), str(adbd_root())], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "already" in proc.stderr and "reading" not in proc.stderr
