"""edgeprune.bench: statistics against independent numpy, the alternating protocol in every runtime, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeprune.bench import (
    ModelSource,
    bench_models,
    block_schedule,
    render_table,
    result_from_samples,
    speedup,
    summarize_samples,
    update_report_md,
    write_outputs,
)
from edgeprune.checkpoint import save_checkpoint
from edgeprune.errors import BenchError
from edgeprune.models import create_model

STATS = ("mean_ms", "std_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")
RUNS, WARMUP, BLOCK = 40, 3, 10


def numpy_stats(samples):
    a = np.asarray(samples, dtype=np.float64)
    return {"mean_ms": a.mean(), "std_ms": a.std(ddof=1), "median_ms": np.median(a),
            "p90_ms": np.quantile(a, 0.9), "p99_ms": np.quantile(a, 0.99), "min_ms": a.min(), "max_ms": a.max()}


def assert_stats_match(stats, samples):
    want = numpy_stats(samples)
    assert stats["n"] == len(samples)
    for k in STATS:
        assert stats[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k


def assert_alternation(block_order, n_models, runs, block):
    """Blocks cycle through the models in order, each block continues where that model stopped."""
    assert [b["model"] for b in block_order] == [i % n_models for i in range(len(block_order))]
    for m in range(n_models):
        mine = [b for b in block_order if b["model"] == m]
        assert [b["start"] for b in mine] == list(range(0, runs, block))
        assert sum(b["count"] for b in mine) == runs


# ---------------------------------------------------------------- statistics (pure functions)

@pytest.mark.parametrize("n", [2, 7, 1000])
def test_summarize_matches_numpy(n):
    samples = np.random.default_rng(n).lognormal(1.0, 0.4, size=n)
    assert_stats_match(summarize_samples(samples.tolist()), samples)


def test_summarize_single_and_empty():
    assert summarize_samples([3.5]) == {"n": 1, "mean_ms": 3.5, "std_ms": 0.0, "median_ms": 3.5, "p90_ms": 3.5,
                                        "p99_ms": 3.5, "min_ms": 3.5, "max_ms": 3.5}
    empty = summarize_samples([])
    assert empty["n"] == 0 and all(empty[k] is None for k in STATS)
    with pytest.raises(BenchError):
        summarize_samples([1.0, float("nan")])


def test_speedup_point_estimates_and_bootstrap_ci():
    rng = np.random.default_rng(1)
    slim = rng.lognormal(0.0, 0.2, size=500)
    dense = rng.lognormal(np.log(2.0), 0.2, size=600)
    sp = speedup(dense, slim, seed=3)
    assert sp["median"] == pytest.approx(np.median(dense) / np.median(slim))
    assert sp["mean"] == pytest.approx(dense.mean() / slim.mean())
    for key in ("median", "mean"):
        lo, hi = sp["ci95"][key]
        assert lo < sp[key] < hi
        assert hi - lo < 0.5  # 500 samples pin a 2x ratio well
    assert speedup(dense, slim, seed=3) == sp  # seeded: reproducible
    assert speedup(dense, slim, seed=4)["ci95"] != sp["ci95"]
    assert speedup(dense, slim, seed=3, resamples=50)["resamples"] == 50
    # A constant ratio with no noise leaves no uncertainty.
    exact = speedup([4.0] * 20, [2.0] * 30, seed=0)
    assert exact["median"] == exact["mean"] == 2.0 and exact["ci95"]["median"] == [2.0, 2.0]
    with pytest.raises(BenchError):
        speedup([], [1.0])


def test_block_schedule_alternates():
    sched = block_schedule(2, 25, 10)
    assert sched == [(0, 10), (1, 10), (0, 10), (1, 10), (0, 5), (1, 5)]
    assert block_schedule(1, 3, 50) == [(0, 3)]


# ---------------------------------------------------------------- models on disk

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Dense (tiny-resnet) and slim (tiny-cnn) as checkpoint, ONNX, ORT and TorchScript lite."""
    d = tmp_path_factory.mktemp("bench_models")
    torch.manual_seed(0)
    out = {}
    (d / "onnx").mkdir()
    for role, name in (("dense", "tiny-resnet"), ("slim", "tiny-cnn")):
        m = create_model(name).eval()
        x = torch.randn(1, 1, 8, 8)
        save_checkpoint(d / f"{role}.pt", m, meta={"input_shape": [1, 8, 8]})
        torch.onnx.export(m, (x,), str(d / "onnx" / f"{role}.onnx"), dynamo=False, external_data=False)
        torch.jit.trace(m, x)._save_for_lite_interpreter(str(d / f"{role}.ptl"))
        out[role] = {"pt": d / f"{role}.pt", "onnx": d / "onnx" / f"{role}.onnx", "ptl": d / f"{role}.ptl"}
    ort_dir = d / "ort"
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(d / "onnx"),
                    "--output_dir", str(ort_dir)], check=True, capture_output=True)
    for role in ("dense", "slim"):
        out[role]["ort"] = ort_dir / f"{role}.ort"
        assert out[role]["ort"].exists()
    return out


@pytest.mark.parametrize("runtime,ext", [("onnxruntime", "onnx"), ("onnxruntime", "ort"), ("torch", "pt"),
                                         ("ptl", "ptl"), ("onnxruntime", "pt"), ("ptl", "pt")])
def test_bench_every_runtime(files, runtime, ext):
    threads_before = torch.get_num_threads()
    sources = [ModelSource(files["dense"][ext], label="dense", role="baseline"),
               ModelSource(files["slim"][ext], label="slim")]
    res = bench_models(sources, runtime=runtime, runs=RUNS, warmup=WARMUP, threads=1, batch_size=1,
                       input_shape=None, block_size=BLOCK, seed=0, progress=False, warmup_seconds=0.0)
    assert torch.get_num_threads() == threads_before  # fixed for the run, restored after
    assert not res.interrupted
    assert [m.label for m in res.models] == ["dense", "slim"]
    for m in res.models:
        assert len(m.samples_ms) == RUNS and min(m.samples_ms) > 0
        assert m.input_shape == [1, 8, 8] and m.runtime == runtime
        assert_stats_match(m.stats, m.samples_ms)
    assert_alternation(res.block_order, 2, RUNS, BLOCK)
    sp = res.speedup
    dense, slim = (np.asarray(m.samples_ms) for m in res.models)
    assert sp["median"] == pytest.approx(np.median(dense) / np.median(slim))
    assert sp["mean"] == pytest.approx(dense.mean() / slim.mean())
    assert sp["ci95"]["median"][0] <= sp["median"] <= sp["ci95"]["median"][1]
    assert sp["ci95"]["mean"][0] <= sp["mean"] <= sp["ci95"]["mean"][1]
    # Four dense/slim block pairs: the interval resamples blocks, and the JSON says so.
    assert sp["interval_unit"] == "block" and sp["block_pairs"] == RUNS // BLOCK and sp["unpaired_blocks"] == 0
    d = res.to_dict()
    for m, rec in zip(res.models, d["models"]):
        assert rec["block_counts"] == [BLOCK] * (RUNS // BLOCK)
        assert rec["block_medians_ms"] == pytest.approx(
            [np.median(m.samples_ms[i:i + BLOCK]) for i in range(0, RUNS, BLOCK)])
        assert rec["warmup_runs"] == WARMUP and rec["warmup_seconds"] == 0.0
    assert res.device["threads"] == 1 and res.device["runtime"] == runtime


def test_in_memory_module_and_batch(files):
    res = bench_models([ModelSource(module=create_model("tiny-mlp"), label="mlp")], runtime="onnxruntime", runs=7,
                       warmup=0, threads=2, batch_size=4, input_shape=None, block_size=3, seed=1, progress=False)
    (m,) = res.models
    assert m.input_shape == [1, 4, 4] and len(m.samples_ms) == 7 and res.speedup is None
    assert [b["count"] for b in res.block_order] == [3, 3, 1]
    assert res.to_dict()["batch_size"] == 4


def test_errors_are_bench_errors(files, tmp_path):
    kw = dict(runtime="onnxruntime", runs=2, warmup=0, threads=1, batch_size=1, block_size=1, seed=0,
              progress=False)
    with pytest.raises(BenchError, match="no such file"):
        bench_models([ModelSource(tmp_path / "missing.onnx")], input_shape=None, **kw)
    with pytest.raises(BenchError, match="does not accept input of shape"):
        bench_models([ModelSource(files["slim"]["onnx"])], input_shape=(3, 8, 8), **kw)
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    with pytest.raises(BenchError, match="unsupported model format"):
        bench_models([ModelSource(tmp_path / "m.tflite")], input_shape=None, **kw)
    with pytest.raises(BenchError, match="runs with --runtime onnxruntime"):
        bench_models([ModelSource(files["slim"]["onnx"])], input_shape=None, **{**kw, "runtime": "torch"})
    lone = tmp_path / "lone.ptl"  # a .ptl records no input shape; without a sibling checkpoint it must be given
    lone.write_bytes(files["slim"]["ptl"].read_bytes())
    with pytest.raises(BenchError, match="cannot tell the input shape"):
        bench_models([ModelSource(lone)], input_shape=None, **{**kw, "runtime": "ptl"})
    res = bench_models([ModelSource(lone)], input_shape=(1, 8, 8), **{**kw, "runtime": "ptl"})
    assert res.models[0].input_shape == [1, 8, 8]
    with pytest.raises(BenchError, match="runs must be"):
        bench_models([ModelSource(files["slim"]["onnx"])], input_shape=None, **{**kw, "runs": 0})


class InterruptAt(torch.nn.Module):
    """A real model that raises KeyboardInterrupt inside its n-th forward, as Ctrl-C during an inference does."""

    def __init__(self, n):
        super().__init__()
        self.net, self.calls, self.n = create_model("tiny-cnn"), 0, n

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.net(x)


def test_interrupt_keeps_measured_samples():
    # 1 trial call + 2 warm-up calls, then the 25th timed run is interrupted: 24 slim samples, dense 30.
    slim = InterruptAt(1 + 2 + 25)
    res = bench_models([ModelSource(module=create_model("tiny-cnn"), label="dense", role="baseline",
                                    input_shape=(1, 8, 8)),
                        ModelSource(module=slim, label="slim", input_shape=(1, 8, 8))],
                       runtime="torch", runs=100, warmup=2, threads=1, batch_size=1, input_shape=None,
                       block_size=10, seed=0, progress=False, warmup_seconds=0.0)
    assert res.interrupted and res.to_dict()["interrupted"] is True
    assert [len(m.samples_ms) for m in res.models] == [30, 24]
    assert res.block_order[-1] == {"model": 1, "label": "slim", "start": 20, "count": 4}
    for i, m in enumerate(res.models):
        assert sum(b["count"] for b in res.block_order if b["model"] == i) == len(m.samples_ms)
        assert_stats_match(m.stats, m.samples_ms)
    assert res.speedup["median"] == pytest.approx(np.median(res.models[0].samples_ms) /
                                                  np.median(res.models[1].samples_ms))
    # The interrupted slim block still pairs with the dense block before it.
    assert [m.block_counts for m in res.models] == [[10, 10, 10], [10, 10, 4]]
    assert res.speedup["interval_unit"] == "block" and res.speedup["block_pairs"] == 3


# ---------------------------------------------------------------- outputs

def _fake_result(seed=0, interrupted=False):
    rng = np.random.default_rng(seed)
    dense = rng.normal(200, 6, 300).clip(1)
    slim = rng.normal(100, 8, 300).clip(1)
    device = {"kind": "adb", "model": "P20", "cpu_model": "Cortex-A73"}
    return result_from_samples({"dense": dense, "slim": slim}, runtime="onnxruntime", device=device, warmup=50,
                               threads=4, baseline="dense", seed=seed, interrupted=interrupted), dense, slim


def test_result_from_external_samples():
    res, dense, slim = _fake_result()
    d = res.to_dict()
    assert [m["label"] for m in d["models"]] == ["dense", "slim"]
    for m, s in zip(d["models"], (dense, slim)):
        assert m["samples_ms"] == pytest.approx(s.tolist())
        for k, v in numpy_stats(s).items():
            assert m[k] == pytest.approx(v)
        assert m["device"]["model"] == "P20" and m["threads"] == 4 and m["warmup"] == 50
    assert d["speedup"]["median"] == pytest.approx(np.median(dense) / np.median(slim))
    assert "speedup" in d["models"][1] and "speedup" not in d["models"][0]
    with pytest.raises(BenchError):
        result_from_samples({"a": [1.0]}, runtime="x", device={}, warmup=0, threads=1, baseline="b")


def test_write_outputs_json_plot_and_report_section(tmp_path):
    res, dense, slim = _fake_result()
    report = tmp_path / "report.md"
    report.write_text("# Run\n\nintro\n")
    paths = write_outputs(res, tmp_path / "b" / "bench.json", tmp_path / "lat.png", report)
    d = json.loads(paths["json"].read_text())
    required = {"runs", "warmup", "threads", "mean_ms", "std_ms", "median_ms", "p90_ms", "p99_ms", "min_ms",
                "max_ms", "samples_ms", "runtime", "device"}
    for m in d["models"]:
        assert required <= set(m)
    assert set(d["speedup"]) >= {"median", "mean", "ci95"} and d["interrupted"] is False
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert text.startswith("# Run\n\nintro\n") and text.count("<!-- bench:adb -->") == 1
    assert "| slim |" in text and f"{np.median(dense) / np.median(slim):.2f}×" in text
    # A rerun replaces the section instead of appending another; other sections stay.
    update_report_md(report, "other device\n", key="cpu")
    res2, _, _ = _fake_result(seed=5)
    write_outputs(res2, report_md=report)
    text2 = report.read_text()
    assert text2.count("<!-- bench:adb -->") == 1 and text2.count("<!-- /bench:adb -->") == 1
    assert "other device" in text2 and text2.startswith("# Run")
    assert f"{res2.speedup['median']:.2f}×" in text2


def test_render_table_rows():
    from rich.console import Console

    res, dense, slim = _fake_result(interrupted=True)
    console = Console(width=200, record=True)
    console.print(render_table(res))
    out = console.export_text()
    assert "INTERRUPTED" in out and "1.00× (baseline)" in out
    lo, hi = res.speedup["ci95"]["median"]
    assert f"{res.speedup['median']:.2f}× [{lo:.2f}, {hi:.2f}]" in out


def test_result_from_android_record():
    """The record shape android_bench.run_benchmark returns: device info, order of blocks, raw samples per model."""
    from edgeprune.bench import result_from_android

    rng = np.random.default_rng(7)
    base = rng.normal(200, 6, 100).clip(1).tolist()
    slim = rng.normal(100, 8, 90).clip(1).tolist()
    record = {
        "device": {"model": "EML-L09", "abilist": ["arm64-v8a"]}, "runner": "c-ort", "threads": 4, "partial": True,
        "order": ["baseline.onnx", "model.onnx", "baseline.onnx", "model.onnx"],
        "results": [
            {"model": "baseline.onnx", "path": "/r/baseline.onnx", "role": "baseline", "runtime": "c-ort",
             "runs": 100, "runs_requested": 100, "warmup": 50, "threads": 4, "samples_ms": base,
             "blocks": [{"round": 0, "runs": 50}, {"round": 1, "runs": 50}]},
            {"model": "model.onnx", "path": "/r/model.onnx", "role": "model", "runtime": "c-ort", "runs": 90,
             "runs_requested": 100, "warmup": 50, "threads": 4, "samples_ms": slim,
             "blocks": [{"round": 0, "runs": 50}, {"round": 1, "runs": 40}]},
        ],
    }
    res = result_from_android(record, seed=0)
    d = res.to_dict()
    assert d["interrupted"] is True and d["runs"] == 100 and d["device"]["kind"] == "adb"
    assert [(b["model"], b["start"], b["count"]) for b in d["block_order"]] == [(0, 0, 50), (1, 0, 50), (0, 50, 50),
                                                                                (1, 50, 40)]
    assert d["models"][1]["runs"] == 90 and d["models"][1]["median_ms"] == pytest.approx(np.median(slim))
    assert d["speedup"]["median"] == pytest.approx(np.median(base) / np.median(slim))
    assert d["speedup"]["min"] == pytest.approx(min(base) / min(slim))
    assert "EML-L09" in render_table(res).title


def test_thermal_record_reaches_the_title_and_report_md():
    """A phone run's throttling and cool-down outcome are visible in the table title and in report.md."""
    from edgeprune.bench.report import _title, markdown_section

    rng = np.random.default_rng(0)
    thermal = {"throttled": True, "thermal_source": "thermalservice", "cooldown": {"reached": 3, "not_reached": 0,
               "unchecked": 1}, "cores_policy": "big", "pinned_cores": [4, 5, 6, 7],
               "flags": ["THROTTLED: slim.onnx ran below 1 of 4 blocks' full clock (blocks 2); its times are pessimistic",
                         "cool-down not checked before 1 block(s): no temperature could be read"]}
    result = result_from_samples({"dense": [list(rng.uniform(2, 3, 10)) for _ in range(4)],
                                  "slim": [list(rng.uniform(1, 2, 10)) for _ in range(4)]},
                                 runtime="ort-c", device={"kind": "adb", "model": "P20", "thermal": thermal},
                                 warmup=5, threads=4, baseline="dense")
    assert "THROTTLED" in _title(result)
    md = markdown_section(result)
    assert "Thermal: temperatures from thermalservice" in md and "not checked 1×" in md and "throttled: YES" in md
    assert "- **THROTTLED: slim.onnx" in md and "- **cool-down not checked" in md
    clean = result_from_samples({"dense": [1.0, 2.0], "slim": [1.0, 1.5]}, runtime="onnxruntime",
                                device={"kind": "cpu"}, warmup=1, threads=1, baseline="dense")
    assert "THROTTLED" not in _title(clean) and "Thermal:" not in markdown_section(clean)
