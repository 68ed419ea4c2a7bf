"""The loopback device in PTY mode (old daemons, ``adb shell -t``): CRLF output and a hang-up when the shell exits.

Shows what broke against such a daemon (the device record lost its sections; the old launch line lost the runner)
and that the harness now works there end to end.
"""

from __future__ import annotations

import time

from adb_loopback.fixtures import adb_home, make_device, onnx_models, private_home  # noqa: F401
from android_bench.bench import run_benchmark
from android_bench.devices import describe_device
from android_bench.transport import AdbConnection

WORK = "/data/local/tmp/edgeprune"


def test_pty_output_is_crlf_and_the_harness_reads_it_as_lf(make_device):
    dev = make_device(pty=True, maxdata=4096)
    with AdbConnection(dev.serial) as conn:
        raw = conn._device.shell("echo one; echo two")
        assert raw == "one\r\ntwo\r\n"  # what the wire carries
        assert conn.run("echo one; echo two") == ("one\ntwo\n", 0)


def test_device_record_keeps_every_section_over_a_pty(make_device):
    record = describe_device(make_device(pty=True).serial)
    assert record["online_cpus"] == list(range(8)) and record["big_cores"] == [4, 5, 6, 7]
    assert {z["type"] for z in record["thermal_zones"]} == {"soc_thermal", "cluster0", "cluster1"}
    assert record["cpus"][7]["cpuinfo_max_freq"] == 2362000 and record["machine"] == "aarch64"


def test_old_launch_line_is_hung_up_new_one_survives(make_device):
    dev = make_device(pty=True)
    out_dir = dev.sandbox.root / "data/local/tmp/edgeprune/out"
    inner = f"echo $$ > {WORK}/out/old.pid; sleep 30"
    old = (f"mkdir -p {WORK}/out && cd {WORK} && rm -f {WORK}/out/old.pid && "
           f"nohup sh -c '{inner}' > /dev/null 2>&1 < /dev/null &")
    new = (f"mkdir -p {WORK}/out && cd {WORK} || exit $?\ntrap '' HUP\n"
           f"nohup sh -c 'echo $$ > {WORK}/out/new.pid; sleep 30' > /dev/null 2>&1 < /dev/null &\n")
    with AdbConnection(dev.serial) as conn:
        conn.run(old)
        conn.run(new)
        time.sleep(2)
        assert not (out_dir / "old.pid").exists()  # the chain died with the session before starting the runner
        pid = (out_dir / "new.pid").read_text().strip()
        assert conn.run(f"kill -0 {pid} && echo alive")[0].strip() == "alive"


def test_bench_runs_end_to_end_over_a_pty(make_device, onnx_models):
    dev = make_device(pty=True, maxdata=4096)
    started = time.monotonic()
    result = run_benchmark([onnx_models["slim"]], dev.serial, baseline=onnx_models["dense"], runs=30, warmup=1,
                           cooldown_seconds=1, progress=False, timeout_s=60)
    assert time.monotonic() - started < 60
    assert [r["runs"] for r in result["results"]] == [30, 30]
    assert result["device"]["big_cores"] == [4, 5, 6, 7] and result["threads"] == 4
