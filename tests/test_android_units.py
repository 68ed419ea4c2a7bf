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
    zones = di.parse_thermal("tz0|cpu|45000\ntz1|bms|38\ntz2|broken|\ntz3|pa_therm0|352\ntz4|battery|87\n"
                             "tz5|pm8150b-ibat-lvl0|4200\ntz6|vbat|3800\ntz7|soc|64\ntz8|soc_thermal|41500\n"
                             "tz9|bad-sensor|-273000\n")
    # millidegrees, whole degrees and tenths; charge, current, voltage and out-of-range readings are dropped
    assert [(z["type"], z["temp_c"]) for z in zones] == [("cpu", 45.0), ("bms", 38.0), ("pa_therm0", 35.2),
                                                         ("soc_thermal", 41.5)]
    assert di.parse_battery("  level: 55\n  temperature: 287\n") == {"temp_c": 28.7, "level": 55}
    assert di.max_temperature(zones, {"temp_c": 50.0}) == 50.0


def _soc(layout: list[tuple[int, int]], related: bool = True) -> dict[int, dict]:
    """Synthetic cpufreq table: ``layout`` = [(cores, max kHz)] per cluster, slowest first."""
    table, cpu = {}, 0
    for count, khz in layout:
        members = " ".join(str(c) for c in range(cpu, cpu + count))
        for c in range(cpu, cpu + count):
            table[c] = {"cpuinfo_max_freq": khz, **({"related_cpus": members} if related else {})}
        cpu += count
    return table


@pytest.mark.parametrize("related", [True, False])
@pytest.mark.parametrize("layout,big,prime", [
    ([(4, 1844000), (4, 2362000)], [4, 5, 6, 7], [4, 5, 6, 7]),                     # 4+4 (Kirin 970)
    ([(4, 1785600), (3, 2419200), (1, 2841600)], [4, 5, 6, 7], [7]),                # 1+3+4 (Snapdragon 855)
    ([(4, 1950000), (2, 2310000), (2, 2730000)], [4, 5, 6, 7], [6, 7]),             # 2+2+4 (Exynos 9820)
    ([(8, 2000000)], list(range(8)), list(range(8))),                               # one cluster
])
def test_core_policies_on_real_layouts(layout, big, prime, related):
    table = _soc(layout, related)
    big_choice = di.select_cores("big", table, list(range(8)))
    assert big_choice["cores"] == big and big_choice["mask"] == di.mask_of(big) and big_choice["note"] is None
    assert di.select_cores("prime", table, list(range(8)))["cores"] == prime
    assert di.select_cores("all", table, list(range(8)))["cores"] == list(range(8))
    assert di.select_cores("30", table, list(range(8)))["cores"] == [4, 5]
    assert di.big_core_mask(table) == (di.mask_of(big), big)


def test_offline_big_cores_are_named_not_swapped_for_little_ones():
    # 1+3+4 with cores 6 and 7 hotplugged off: related_cpus still names them, so "big" is 4,5 (not the little cores).
    table = _soc([(4, 1785600), (3, 2419200), (1, 2841600)])
    for cpu in (6, 7):
        table.pop(cpu)  # an offline core has no cpufreq directory
    choice = di.select_cores("big", table, [0, 1, 2, 3, 4, 5], possible=list(range(8)))
    assert choice["cores"] == [4, 5] and choice["offline"] == [6, 7]
    assert "6,7" in choice["note"] and "offline" in choice["note"]
    # 4+4 with the whole big cluster off (no cpufreq left to say its speed): said, and the fastest online cores used.
    table = _soc([(4, 1844000), (4, 2362000)])
    for cpu in (4, 5, 6, 7):
        table.pop(cpu)
    choice = di.select_cores("big", table, [0, 1, 2, 3], possible=list(range(8)))
    assert choice["cores"] == [0, 1, 2, 3] and choice["offline"] == [4, 5, 6, 7] and "instead" in choice["note"]
    with pytest.raises(ValueError, match="big, prime, all or a hex"):
        di.select_cores("fast", table, [0])


def test_shell_cpuset_is_parsed():
    text = "cpuset /foreground\nCpus_allowed_list:\t0-3,6\n"
    assert di.parse_shell_cpuset(text) == {"cgroup": "/foreground", "cpus_allowed": [0, 1, 2, 3, 6]}
    assert di.parse_shell_cpuset("cpuset \n") == {"cgroup": None, "cpus_allowed": None}
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


THERMALSERVICE = """IsStatusOverride: false
ThermalEventListeners:
\tcallbacks: 1
Thermal Status: 2
Cached temperatures:
\tTemperature{mValue=30.5, mType=2, mName=battery, mStatus=0}
HAL Ready: true
HAL connection:
\tThermalHAL 2.0 connected: yes
Current temperatures from HAL:
\tTemperature{mValue=48.1, mType=0, mName=cpu0-silver-usr, mStatus=1}
\tTemperature{mValue=31.2, mType=2, mName=battery, mStatus=0}
\tTemperature{mValue=3812.0, mType=6, mName=vbat, mStatus=0}
\tTemperature{mValue=1200.0, mType=7, mName=ibat, mStatus=0}
\tTemperature{mValue=64.0, mType=8, mName=soc, mStatus=0}
\tTemperature{mValue=36.9, mType=3, mName=skin-therm, mStatus=0}
Current cooling devices from HAL:
\tCoolingDevice{mValue=2, mType=2, mName=cpu0}
"""


def test_thermalservice_typed_temperatures_and_status():
    parsed = di.parse_thermalservice(THERMALSERVICE)
    assert parsed["status"] == 2 and parsed["status_name"] == "moderate"
    assert [(t["name"], t["type"], t["temp_c"]) for t in parsed["temperatures"]] == [
        ("cpu0-silver-usr", "cpu", 48.1), ("battery", "battery", 31.2), ("skin-therm", "skin", 36.9)]
    assert di.parse_thermalservice("Can't find service: thermalservice\n") is None
    snap = di.thermal_snapshot("tz0|cpu|99000\n", THERMALSERVICE)  # the platform's view wins over raw zones
    assert snap["source"] == "thermalservice" and snap["max_temp_c"] == 48.1 and snap["status"] == 2
    zones_only = di.thermal_snapshot("tz0|cpu|45000\ntz1|battery|87\n", "")
    assert zones_only["source"] == "thermal_zones" and zones_only["max_temp_c"] == 45.0
    nothing = di.thermal_snapshot("tz0|battery|87\n", "")
    assert nothing["source"] is None and nothing["max_temp_c"] is None


@pytest.mark.parametrize("serial,expected", [
    ("192.168.1.20:5555", ("tcp", "192.168.1.20", 5555)),
    ("[fe80::1%wlan0]:5555", ("tcp", "fe80::1%wlan0", 5555)),
    ("[::1]:5037", ("tcp", "::1", 5037)),
    ("emulator-5554", ("tcp", "127.0.0.1", 5555)),
    ("adb-R58M12ABCDE-x1Yz2a._adb-tls-connect._tcp", ("mdns", "adb-R58M12ABCDE-x1Yz2a._adb-tls-connect._tcp", None)),
    ("adb-R58M12ABCDE-x1Yz2a._adb._tcp.", ("mdns", "adb-R58M12ABCDE-x1Yz2a._adb._tcp.", None)),
    ("phone.local:5555", ("tcp", "phone.local", 5555)),
    ("R58M12ABCDE", ("usb", "R58M12ABCDE", None)),
    (None, ("usb", None, None)),
])
def test_serials_are_parsed_like_adb(serial, expected):
    from android_bench.transport import parse_serial

    assert parse_serial(serial) == expected


def test_mdns_serial_asks_for_the_ip_port(tmp_path):
    from android_bench.errors import DeviceNotFoundError
    from android_bench.transport import AdbConnection

    with pytest.raises(DeviceNotFoundError, match="mDNS service name.*IP:PORT"):
        AdbConnection("adb-R58M._adb-tls-connect._tcp", key_path=tmp_path / "k").connect()


def test_crlf_is_normalized():
    from android_bench.transport import normalize_newlines

    assert normalize_newlines("a\r\nb\r\n__RC=0\r\n") == "a\nb\n__RC=0\n"


@pytest.mark.parametrize("info,ok", [
    ({"abi": "arm64-v8a", "abilist": ["arm64-v8a", "armeabi-v7a"], "machine": "aarch64"}, True),
    ({"abi": "armeabi-v7a", "abilist": ["armeabi-v7a", "armeabi"], "machine": "aarch64"}, False),  # 32-bit userland
    ({"abi": "armeabi-v7a", "abilist": ["armeabi-v7a", "arm64-v8a"], "machine": "aarch64"}, False),  # not primary
    ({"abi": "arm64-v8a", "abilist": ["arm64-v8a"], "machine": "armv8l"}, False),  # 32-bit kernel personality
    ({"abi": "x86_64", "abilist": ["x86_64", "x86"], "machine": "x86_64"}, False),  # emulator
])
def test_abi_checked_on_primary_abi_and_machine(info, ok):
    from android_bench.bench import check_abi
    from android_bench.errors import AbiMismatchError
    from android_bench.runners.ort_python import PythonOrtRunner

    class Arm64(PythonOrtRunner):
        name = "arm64-runner"
        abi = "arm64-v8a"

    info = {"model": "Phone", **info}
    if ok:
        check_abi(Arm64(), info)
    else:
        with pytest.raises(AbiMismatchError, match="needs arm64-v8a") as exc:
            check_abi(Arm64(), info)
        assert "\n" not in str(exc.value)


def test_default_blocks_per_model():
    from android_bench.bench import default_rounds, split_runs

    assert default_rounds(1000) == 10 and split_runs(1000, 10) == [100] * 10
    assert default_rounds(50) == 2 and default_rounds(50, paired=False) == 1 and default_rounds(5000) == 10
