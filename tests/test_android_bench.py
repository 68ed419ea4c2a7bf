"""run_benchmark end to end against the loopback device, with the python-ort runner executing real onnxruntime."""

from __future__ import annotations

import json
import threading
import time

import pytest

from adb_loopback.fixtures import adb_home, device, make_device, onnx_models, private_home  # noqa: F401
from android_bench.bench import is_throttled, run_benchmark, schedule, split_runs

WORKDIR = "data/local/tmp/edgeprune"


def test_dense_and_slim_alternate_with_all_samples_and_device_record(device, onnx_models, tmp_path):
    partial = tmp_path / "result.json"
    result = run_benchmark([onnx_models["slim"]], device.serial, runs=1000, warmup=5, cooldown_seconds=5,
                           baseline=onnx_models["dense"], partial_path=partial, progress=False, rounds=2)

    # A B A B: baseline and model interleaved in two blocks each, 1000 samples per model in total.
    assert result["order"] == ["dense.onnx", "slim.onnx", "dense.onnx", "slim.onnx"]
    by_name = {r["model"]: r for r in result["results"]}
    assert by_name["dense.onnx"]["role"] == "baseline" and by_name["slim.onnx"]["role"] == "model"
    for res in result["results"]:
        assert res["runs"] == 1000 and len(res["samples_ms"]) == 1000
        assert [b["runs"] for b in res["blocks"]] == [500, 500]
        # each block its own runner process, its samples kept apart for a block bootstrap
        assert [len(b) for b in res["block_samples_ms"]] == [500, 500]
        assert sum(res["block_samples_ms"], []) == res["samples_ms"]
        assert all(b["cooldown_reached"] is True and b["freq_khz"] for b in res["blocks"])
        assert all(0 < s < 1000 for s in res["samples_ms"])
        assert res["runtime"] == "python-ort" and res["warmup"] == 5
        # Pinned to the big cluster (cpu4-7 have the highest cpuinfo_max_freq), one thread per pinned core.
        assert res["cores"] == "f0" and res["threads"] == 4
        assert res["throttled"] is False and res["freq_samples"]
        assert set(res["freq_samples"][0]["khz"]) == {4, 5, 6, 7}
        assert res["complete"] and not res["retried"]
    assert device.sandbox.taskset_masks() == ["f0"] * 4

    dev = result["device"]
    assert (dev["manufacturer"], dev["model"]) == ("HUAWEI", "EML-L29")
    assert (dev["android_release"], dev["sdk"]) == ("8.1.0", "27")
    assert dev["abilist"] == ["arm64-v8a", "armeabi-v7a", "armeabi"]
    assert dev["platform"] == "kirin970" and dev["hardware"] == "kirin970"
    assert dev["online_cpus"] == list(range(8)) and dev["big_cores"] == [4, 5, 6, 7]
    cores = {c["cpu"]: c for c in dev["cpus"]}
    assert cores[0]["core"] == "Cortex-A53" and cores[7]["core"] == "Cortex-A73"
    assert cores[7]["cpuinfo_max_freq"] == 2362000 and cores[7]["scaling_governor"] == "schedutil"
    assert {z["type"]: z["temp_c"] for z in dev["thermal_zones"]} == {"soc_thermal": 36.0, "cluster0": 35.0,
                                                                      "cluster1": 36.5}
    assert dev["battery"] == {"temp_c": 31.2, "level": 87}

    # JSON-serializable, and the file written equals what was returned.
    assert json.loads(partial.read_text()) == json.loads(json.dumps(result))
    # keep=False: the work dir is gone afterwards.
    assert not (device.sandbox.root / WORKDIR).exists()


def test_second_run_with_keep_pushes_nothing(device, onnx_models):
    first = run_benchmark([onnx_models["slim"], onnx_models["dense"]], device.serial, runs=20, warmup=1,
                          cooldown_seconds=1, keep=True, progress=False)
    pushes_after_first = device.events_of("push")
    assert {p[1].rsplit("/", 1)[-1] for p in pushes_after_first} >= {"ort_python_script.py"}
    assert len(pushes_after_first) == 3 and len(first["pushed"]) == 3

    second = run_benchmark([onnx_models["slim"], onnx_models["dense"]], device.serial, runs=20, warmup=1,
                           cooldown_seconds=1, keep=True, progress=False)
    assert device.events_of("push") == pushes_after_first  # nothing pushed again
    assert second["pushed"] == []
    assert [r["runs"] for r in second["results"]] == [20, 20]
    assert (device.sandbox.root / WORKDIR / "ort_python_script.py").exists()

    # A changed file (different hash) is pushed again.
    script = device.sandbox.root / WORKDIR / "ort_python_script.py"
    script.write_text(script.read_text() + "\n# changed on the device\n")
    third = run_benchmark([onnx_models["slim"]], device.serial, runs=5, warmup=0, cooldown_seconds=1, keep=True,
                          progress=False)
    assert third["pushed"] == ["/data/local/tmp/edgeprune/ort_python_script.py"]


def test_throttling_is_flagged_from_frequencies(device, onnx_models):
    device.sandbox.set_max_freq(5, 1_200_000)  # the thermal governor capped cpu5 at half its 2.36 GHz
    device.sandbox.set_cur_freq(5, 1_200_000)
    result = run_benchmark([onnx_models["slim"]], device.serial, runs=10, warmup=0, cooldown_seconds=1,
                           progress=False)
    res = result["results"][0]
    assert res["throttled"] is True and res["blocks"][0]["throttled"] is True
    assert any(s["khz"][5] == 1_200_000 and s["max_khz"][5] == 1_200_000 for s in res["freq_samples"])


def test_throttle_rule_ignores_idle_start_but_catches_drops_and_caps():
    top = {4: 2_000_000}
    ramp_up = [{"khz": {4: 600_000}}, {"khz": {4: 2_000_000}}, {"khz": {4: 1_950_000}}]
    assert is_throttled(ramp_up, top, 0.9) is False  # low clock while the runner starts is not throttling
    assert is_throttled(ramp_up + [{"khz": {4: 1_400_000}}], top, 0.9) is True  # dropped after ramping up
    capped = [{"khz": {4: 1_000_000}, "max_khz": {4: 1_000_000}}]
    assert is_throttled(capped, top, 0.9) is True  # capped from the start
    assert is_throttled([{"khz": {"4": 1_000_000}}], top, 0.9) is False  # never ramped, never capped


def test_explicit_cores_and_threads_override_big_core_pinning(device, onnx_models):
    result = run_benchmark([onnx_models["slim"]], device.serial, runs=10, warmup=0, cores="3", threads=1,
                           cooldown_seconds=1, progress=False)
    res = result["results"][0]
    assert (res["cores"], res["threads"]) == ("3", 1)
    assert device.sandbox.taskset_masks() == ["3"]
    assert set(res["freq_samples"][0]["khz"]) == {0, 1}
    # Little cores are not throttled at their own 1.84 GHz maximum.
    assert res["throttled"] is False


def test_cooldown_waits_for_idle_temperature_and_is_bounded(device, onnx_models):
    device.sandbox.set_temp(2, 55_000)  # hot: 55 °C against an idle baseline of 36 °C

    def cool_later():
        time.sleep(1.0)
        device.sandbox.set_temp(2, 36_500)

    t = threading.Thread(target=cool_later)
    t.start()
    result = run_benchmark([onnx_models["slim"]], device.serial, runs=5, warmup=0, cooldown_seconds=20,
                           idle_temp_c=36.0, progress=False)
    t.join()
    block = result["results"][0]["blocks"][0]
    assert block["cooldown_reached"] is True and 0.8 <= block["cooldown_s"] < 10

    device.sandbox.set_temp(2, 55_000)
    start = time.monotonic()
    result = run_benchmark([onnx_models["slim"]], device.serial, runs=5, warmup=0, cooldown_seconds=1.0,
                           idle_temp_c=36.0, progress=False)
    block = result["results"][0]["blocks"][0]
    assert block["cooldown_reached"] is False and block["start_temp_c"] == 55.0
    assert 1.0 <= block["cooldown_s"] < 3 and time.monotonic() - start < 15


def test_progress_goes_to_stderr_not_stdout(device, onnx_models, capfd):
    run_benchmark([onnx_models["slim"]], device.serial, runs=5, warmup=0, cooldown_seconds=1, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "slim.onnx" in err or "done" in err


@pytest.mark.parametrize("runs,rounds,expected", [(1000, 2, [500, 500]), (1000, 3, [334, 333, 333]), (1, 2, [1])])
def test_split_runs(runs, rounds, expected):
    assert split_runs(runs, rounds) == expected
    assert sum(split_runs(runs, rounds)) == runs


def test_schedule_interleaves_models_round_by_round():
    assert schedule(2, 2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert schedule(3, 1) == [(0, 0), (0, 1), (0, 2)]


def test_ort_c_runner_bundle_through_the_harness(make_device, onnx_models, native_ort_c_bundle):
    """The C runner's interface (nested files, its command, its parser) works through the same protocol (the
    loopback phone presents itself as the x86_64 device the native bundle is built for)."""
    bundle = native_ort_c_bundle
    device = make_device(props={"ro.product.cpu.abi": "x86_64", "ro.product.cpu.abilist": "x86_64,arm64-v8a",
                                "ro.product.cpu.abilist64": "x86_64,arm64-v8a"}, machine="x86_64")
    result = run_benchmark([onnx_models["slim"]], device.serial, runner=f"ort-c:{bundle}", runs=100, warmup=2,
                           cooldown_seconds=1, keep=True, progress=False)
    res = result["results"][0]
    assert res["runtime"] == "ort-c" and res["runs"] == 100 and all(s > 0 for s in res["samples_ms"])
    assert (device.sandbox.root / WORKDIR / "ort_c" / "run.sh").is_file()
    assert device.sandbox.taskset_masks() == ["f0"]


def test_android_10_thermal_service_is_preferred_and_its_status_flags_throttling(device, onnx_models):
    # Typed temperatures from the platform (a BCL current entry among them, to be ignored) and status 2 = moderate.
    device.sandbox.set_thermalservice(2, [("cpu0", 0, 41.5), ("skin", 3, 33.0), ("ibat", 7, 1200.0)])
    result = run_benchmark([onnx_models["slim"]], device.serial, runs=10, warmup=0, cooldown_seconds=1,
                           progress=False)
    dev = result["device"]
    assert dev["thermal_source"] == "thermalservice" and dev["thermal_status"] == 2 and dev["max_temp_c"] == 41.5
    assert {t["name"] for t in dev["temperatures"]} == {"cpu0", "skin"}
    block = result["results"][0]["blocks"][0]
    assert block["throttled"] is True and block["end_thermal_status"] == 2 and block["cooldown_reached"] is True
    assert result["idle_temp_c"] == 41.5 and result["throttled"] is True
