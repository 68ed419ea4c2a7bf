"""Parsers, registry, keys, transport helpers and the ``python -m android_bench`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adb_loopback.fixtures import adb_home, device, make_device, onnx_models, private_home  # noqa: F401
from android_bench import device_info as di
from android_bench.errors import RunnerOutputError, UnknownRunnerError, UsbSupportMissingError
from android_bench.runners.base import RunSpec, get_runner, known_runners, register_runner
from android_bench.runners.ort_python import parse_output
from android_bench.transport import AdbConnection, ensure_adb_key, parse_serial


def test_package_never_imports_edgeprune():
    code = ("import sys, android_bench, android_bench.bench, android_bench.devices, android_bench.__main__;"
            "import android_bench.runners;"
            "android_bench.runners.known_runners();"
            "bad = [m for m in sys.modules if m == 'edgeprune' or m.startswith('edgeprune.')];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_getprop_and_cpuinfo_parsers():
    props = di.parse_getprop("[ro.product.model]: [Pixel 7]\n[ro.build.version.sdk]: [34]\n[empty]: []\n")
    assert props == {"ro.product.model": "Pixel 7", "ro.build.version.sdk": "34", "empty": ""}
    info = di.parse_cpuinfo("processor\t: 0\nCPU part\t: 0xd05\n\nprocessor\t: 1\nCPU part\t: 0xd44\n\n"
                            "Hardware\t: Qualcomm\n")
    assert [c["name"] for c in info["cores"]] == ["Cortex-A55", "Cortex-X1"] and info["hardware"] == "Qualcomm"
    assert di.parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]


def test_thermal_units_and_battery():
    zones = di.parse_thermal("tz0|cpu|45000\ntz1|bms|38\ntz2|broken|\n")
    assert [(z["type"], z["temp_c"]) for z in zones] == [("cpu", 45.0), ("bms", 38.0)]
    assert di.parse_battery("  level: 55\n  temperature: 287\n") == {"temp_c": 28.7, "level": 55}
    assert di.max_temperature(zones, {"temp_c": 50.0}) == 50.0


def test_big_core_mask_from_max_freq():
    freqs = {c: {"cpuinfo_max_freq": f} for c, f in enumerate([1800, 1800, 1800, 1800, 2400, 2400, 2400, 3000])}
    assert di.big_core_mask(freqs) == ("80", [7])  # prime core alone is the fastest cluster
    assert di.big_core_mask(freqs, online=[0, 1, 4, 5]) == ("30", [4, 5])  # offline cores are not used
    assert di.cores_of("f0") == [4, 5, 6, 7] and di.mask_of([4, 5, 6, 7]) == "f0"


def test_python_ort_parse_rejects_malformed_output():
    assert parse_output("INFER 0.5\nINFER 0.25\nSUMMARY runs=2 mean_ms=0.375\n") == [0.5, 0.25]
    with pytest.raises(RunnerOutputError, match="no SUMMARY"):
        parse_output("INFER 0.5\nTraceback (most recent call last):\n")
    with pytest.raises(RunnerOutputError, match="SUMMARY says runs=3"):
        parse_output("INFER 0.5\nSUMMARY runs=3\n")
    with pytest.raises(RunnerOutputError, match="malformed"):
        parse_output("INFER fast\nSUMMARY runs=1\n")


def test_python_ort_command_pins_and_quotes():
    runner = get_runner("python-ort")
    spec = RunSpec(model_remote="/data/local/tmp/edgeprune/models/a b.onnx", runs=10, warmup=2, threads=4, cores="f0",
                   workdir="/data/local/tmp/edgeprune", input_shape=(1, 16))
    cmd = runner.command(spec)
    assert cmd.startswith("taskset f0 python3 /data/local/tmp/edgeprune/ort_python_script.py")
    assert "'/data/local/tmp/edgeprune/models/a b.onnx'" in cmd and "--threads 4" in cmd and "--input-shape 1,16" in cmd
    assert get_runner("python-ort:/usr/bin/python3.11").command(spec).split()[2] == "/usr/bin/python3.11"


def test_registry_lists_known_runners_and_accepts_new_ones():
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("nonesuch:/x")
    assert "python-ort" in str(info.value)
    register_runner("unit-test-runner", lambda arg: get_runner("python-ort:" + (arg or "python3")))
    assert "unit-test-runner" in known_runners()
    assert get_runner("unit-test-runner:/opt/py").python == "/opt/py"
    with pytest.raises(ValueError):
        register_runner("bad:prefix", lambda arg: None)


def test_adb_key_created_private_and_kept(tmp_path):
    key = ensure_adb_key(tmp_path / "dot-android" / "adbkey")
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "dot-android" / "adbkey.pub").read_bytes().split(b" ")[0]  # adb's base64 struct
    before = key.read_bytes()
    pub = (tmp_path / "dot-android" / "adbkey.pub").read_bytes()
    ensure_adb_key(key)
    assert key.read_bytes() == before  # an existing key is never replaced
    (tmp_path / "dot-android" / "adbkey.pub").unlink()
    ensure_adb_key(key)
    assert key.read_bytes() == before
    assert (tmp_path / "dot-android" / "adbkey.pub").read_bytes().split(b" ")[0] == pub.split(b" ")[0]


def test_serial_kinds_and_missing_usb_extra(private_home):
    assert parse_serial("192.168.1.20:5555") == ("tcp", "192.168.1.20", 5555)
    assert parse_serial("R58M12ABCDE") == ("usb", "R58M12ABCDE", None)
    assert parse_serial(None) == ("usb", None, None)
    try:
        import usb1  # noqa: F401
    except ImportError:
        with pytest.raises(UsbSupportMissingError, match="adb-shell\\[usb\\]"):
            AdbConnection("R58M12ABCDE").connect()


def test_cli_bench_writes_result_and_errors_are_one_line(device, onnx_models, tmp_path, capsys):
    from android_bench.__main__ import main

    out = tmp_path / "res.json"
    rc = main(["bench", str(onnx_models["slim"]), "--serial", device.serial, "--runs", "12", "--warmup", "0",
               "--cooldown", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["partial"] is False and saved["results"][0]["runs"] == 12
    assert "slim.onnx" in capsys.readouterr().out

    rc = main(["describe", "--serial", device.serial])
    assert rc == 0 and json.loads(capsys.readouterr().out)["model"] == "EML-L29"

    rc = main(["bench", str(onnx_models["slim"]), "--serial", "127.0.0.1:1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: no device answers at 127.0.0.1:1") and err.count("\n") == 1


def test_device_info_record_is_plain_json(device):
    from android_bench.devices import describe_device

    record = describe_device(device.serial)
    assert json.loads(json.dumps(record)) == record
    assert record["serial"] == device.serial and record["big_core_mask"] == "f0"
    assert os.environ["HOME"]  # the key used lives in the private HOME of the fixture


def test_top_level_names_resolve_lazily():
    import android_bench
    from android_bench.bench import run_benchmark

    assert android_bench.run_benchmark is run_benchmark
    assert android_bench.describe_device.__module__ == "android_bench.devices"
    with pytest.raises(AttributeError):
        android_bench.no_such_name  # noqa: B018
