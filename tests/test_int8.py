"""INT8 after surgery: ONNX Runtime quantization validated against the float PyTorch model on real Fashion-MNIST
samples, the accuracy gate, the .ort of a QDQ model, and the three-model benchmark of a run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.checkpoint import save_checkpoint
from edgeprune.data import Batches, DataBundle, TensorSplit
from edgeprune.errors import ConfigError
from edgeprune.export.quantize import (
    INT8_RTOL,
    MIN_AGREEMENT,
    QuantizeConfig,
    export_int8,
    gemm_to_matmul,
)
from edgeprune.models import create_model
from edgeprune.train import train_epoch

from adb_loopback.fixtures import adb_home, make_device, private_home  # noqa: F401
from test_runner_arm64 import arm64_bundle, qemu_sandbox  # noqa: F401  (the aarch64 runner under qemu)

pytestmark = pytest.mark.usefixtures("one_thread")
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fmnist():
    """Real Fashion-MNIST: 4,000 training images (LeNet-5 trained on them for one epoch) and 2,000 test images."""
    from edgeprune.data import load_dataset

    full = load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(full.train), generator=g)[:4000]
    return DataBundle("fashion-mnist", full.train.subset(idx), full.val.subset(torch.arange(500)),
                      full.test.subset(torch.arange(2000)), full.input_shape, full.num_classes, full.root)


@pytest.fixture(scope="module")
def lenet(fmnist):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_epoch(model, Batches(fmnist.train, 64, shuffle=True), opt)
    return model.eval()


def _within_tolerance(got, want) -> bool:
    """The documented INT8 tolerance: the 99th percentile over samples of max |Δ logits| ≤ INT8_RTOL · max(1, max|y|)."""
    per_sample = np.abs(got - want).max(1)
    return np.percentile(per_sample, 99) <= INT8_RTOL * max(1.0, float(np.max(np.abs(want))))


def _ort(path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.realdata
def test_static_int8_matches_the_float_model_on_real_samples(lenet, fmnist, tmp_path):
    import onnx
    from onnx import numpy_helper

    rec = export_int8(lenet, tmp_path, "m", (1, 28, 28), fmnist, QuantizeConfig(calibration_samples=128))
    assert rec["passed"] and rec["shipped"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.7z", "m.int8.json", "m.int8.onnx", "m.int8.ort"]

    # Independent truth: the float PyTorch model on real test images, the INT8 file run sample by sample.
    x = fmnist.test.x[1000:1200].numpy()  # samples the export's own check did not use
    with torch.no_grad():
        want = lenet(torch.from_numpy(x)).numpy()
    got = _ort(tmp_path / "m.int8.onnx", x)
    assert _within_tolerance(got, want)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= MIN_AGREEMENT
    assert not np.allclose(got, want, atol=1e-4), "the INT8 model computes exactly the float function: not quantized"

    # QDQ, per-channel int8 weights, uint8 activations.
    proto = onnx.load(str(tmp_path / "m.int8.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in proto.graph.initializer}
    weights = [inits[n.input[0]] for n in proto.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type ==
               onnx.TensorProto.INT8]
    assert weights, "no int8 weights"
    per_channel = [numpy_helper.to_array(inits[n.input[1]]).size for n in proto.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in weights}]
    assert max(per_channel) > 1
    # Stored size: int8 weights are a quarter of float32 (LeNet-5: ~431k parameters, ~1.7 MB in float).
    assert rec["onnx_bytes"] < 0.3 * 4 * sum(p.numel() for p in lenet.parameters())
    assert rec["onnx_7z_bytes"] == (tmp_path / "m.int8.7z").stat().st_size

    # The recorded test accuracies are those of the files: recompute the INT8 one on the whole test subset.
    err = float(np.mean(_ort(tmp_path / "m.int8.onnx", fmnist.test.x.numpy()).argmax(1) != fmnist.test.y.numpy()))
    assert rec["int8"]["top1_error"] == pytest.approx(err)
    assert rec["drop_pt"] == pytest.approx(100 * (rec["int8"]["top1_error"] - rec["float"]["top1_error"]))
    assert json.loads((tmp_path / "m.int8.json").read_text())["passed"] is True


@pytest.mark.realdata
def test_ort_of_a_qdq_model_loads_and_runs_like_the_onnx(lenet, fmnist, tmp_path):
    export_int8(lenet, tmp_path, "m", (1, 28, 28), fmnist, QuantizeConfig(calibration_samples=64))
    x = fmnist.test.x[:50].numpy()
    from_ort = _ort(tmp_path / "m.int8.ort", x)
    from_onnx = _ort(tmp_path / "m.int8.onnx", x)
    assert from_ort.shape == (50, 10)
    assert np.mean(from_ort.argmax(1) == from_onnx.argmax(1)) >= 0.98
    assert _within_tolerance(from_ort, from_onnx)


def _dark(data: DataBundle, factor: float) -> DataBundle:
    """Calibration images far darker than the test images: activation ranges too narrow, outputs clipped."""
    train = TensorSplit(data.train.x * factor, data.train.y)
    return DataBundle(data.name, train, data.val, data.test, data.input_shape, data.num_classes, data.root)


@pytest.mark.realdata
def test_gate_refuses_a_model_forced_to_fail_and_keeps_stale_files_out(lenet, fmnist, tmp_path):
    stale = tmp_path / "m.int8.onnx"
    stale.write_bytes(b"an INT8 model of an earlier export")
    rec = export_int8(lenet, tmp_path, "m", (1, 28, 28), _dark(fmnist, 0.02), QuantizeConfig(calibration_samples=64))
    assert not rec["passed"] and not rec["shipped"]
    assert rec["drop_pt"] > 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.json"]
    assert json.loads((tmp_path / "m.int8.json").read_text())["shipped"] is False

    # Told to keep it anyway, a model that still matches the float model within tolerance ships, marked as missed.
    keep = tmp_path / "keep"
    rec = export_int8(lenet, keep, "m", (1, 28, 28), fmnist,
                      QuantizeConfig(calibration_samples=64, max_drop=0.0, keep_failed=True))
    assert rec["shipped"] and (keep / "m.int8.onnx").is_file()
    assert rec["passed"] == (rec["drop_pt"] <= 0.0)


def _fmnist_folder(folder: Path, train_factor: float) -> Path:
    """A fashion-mnist folder with the real test split and the first 2,000 real training images scaled."""
    from tests._synthetic import write_idx

    from edgeprune.data._readers import read_idx

    x = read_idx(FMNIST / "train-images-idx3-ubyte.gz").numpy()[:2000]
    y = read_idx(FMNIST / "train-labels-idx1-ubyte.gz").numpy()[:2000]
    write_idx(folder / "train-images-idx3-ubyte", np.round(x * train_factor).astype(np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", y)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FMNIST / name, folder / name)
    return folder


@pytest.mark.realdata
def test_cli_export_quantize_passes_and_a_failing_model_exits_1(lenet, tmp_path, capsys, monkeypatch):
    from edgeprune.cli import main

    ck = save_checkpoint(tmp_path / "slim.pt", lenet, meta={"dataset": "fashion-mnist", "input_shape": [1, 28, 28]})
    out = tmp_path / "out"
    assert main(["export", str(ck), "--format", "onnx,ort", "--out", str(out), "--quantize", "int8",
                 "--calibration-samples", "64", "--calibration", "percentile", "--max-int8-drop", "2"]) == 0
    text = capsys.readouterr().out
    assert "slim.int8.onnx" in text and "INT8 gate" in text and "passed" in text
    rec = json.loads((out / "slim.int8.json").read_text())
    assert rec["quantization"]["calibration"] == "percentile" and rec["test_samples"] == 10000

    # Calibration images 50× darker than the test images: the gate must refuse, keep the float files, exit 1.
    monkeypatch.setenv("EDGEPRUNE_DATA", str(_fmnist_folder(tmp_path / "dark", 0.02)))
    bad = tmp_path / "bad"
    rc = main(["export", str(ck), "--format", "onnx", "--out", str(bad), "--quantize", "int8",
               "--calibration-samples", "64"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(errors) == 1
    assert errors[0].startswith("error: INT8 model slim.int8 misses the accuracy gate") and "--keep-int8" in errors[0]
    assert sorted(p.name for p in bad.iterdir()) == ["slim.7z", "slim.int8.json", "slim.onnx"]


def test_options_are_validated_with_one_line_errors(tmp_path, capsys):
    from edgeprune.cli import main

    for bad in (dict(mode="fp16"), dict(calibration="kl"), dict(calibration_samples=0), dict(max_drop=-1)):
        with pytest.raises(ConfigError):
            QuantizeConfig(**bad)
    assert main(["export", "tiny-mlp", "--quantize", "int4", "--out", str(tmp_path)]) == 1
    assert "--quantize" in capsys.readouterr().err
    assert main(["export", "tiny-mlp", "--quantize", "int8", "--calibration", "kl", "--out", str(tmp_path)]) == 1
    assert "calibration" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "m.pt"), "--quantize", "int4", "--out", str(tmp_path / "r")]) == 1
    assert "--quantize" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "m.pt"), "--quantize", "int8", "--quant-mode", "fp16",
                 "--out", str(tmp_path / "r")]) == 1
    assert "quantization mode" in capsys.readouterr().err
    assert main(["export", "tiny-mlp", "--keep-int8", "--out", str(tmp_path)]) == 1
    assert "apply to --quantize int8" in capsys.readouterr().err
    # A zoo name records no dataset: say what to pass.
    assert main(["export", "tiny-mlp", "--quantize", "int8", "--format", "onnx", "--out", str(tmp_path)]) == 1
    assert "--dataset" in capsys.readouterr().err


def test_dynamic_int8_of_a_linear_model_uses_integer_matmuls(tmp_path):
    """Dynamic quantization needs no calibration: Linear layers (Gemm) become MatMulInteger with int8 weights."""
    import onnx

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3]).argmax(1)
    # The test split as a plain torch Dataset (as imagefolder gives), not a TensorSplit: read batch by batch.
    data = DataBundle("synthetic", TensorSplit(x[:400], y[:400]), TensorSplit(x[400:450], y[400:450]),
                      torch.utils.data.TensorDataset(x[450:], y[450:]), (1, 4, 4), 3, "")
    torch.manual_seed(0)
    model = create_model("tiny-mlp", hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for e in range(8):
        b = Batches(data.train, 32, shuffle=True)
        b.set_epoch(e)
        train_epoch(model, b, opt)
    rec = export_int8(model.eval(), tmp_path, "mlp", (1, 4, 4), data, QuantizeConfig(mode="dynamic", max_drop=5.0))
    assert rec["quantization"]["gemm_rewritten"] == 3
    ops = {n.op_type for n in onnx.load(str(tmp_path / "mlp.int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Gemm" not in ops
    assert rec["test_samples"] == 150
    with torch.no_grad():
        want = model(x[450:]).numpy()
    got = _ort(tmp_path / "mlp.int8.onnx", x[450:].numpy())
    assert _within_tolerance(got, want)
    assert rec["passed"] and rec["test_agreement"]["top1_agreement"] >= MIN_AGREEMENT


def test_gemm_rewrite_keeps_the_function(tmp_path):
    import onnx

    from edgeprune.export.onnx_export import build_onnx
    from edgeprune.export.validate import onnxruntime_runner

    model = create_model("tiny-mlp").eval()
    path = tmp_path / "m.onnx"
    build_onnx(model, torch.randn(1, 1, 4, 4), path, dynamic_batch=True)
    proto = onnx.load(str(path))
    assert gemm_to_matmul(proto) == 3
    onnx.save_model(proto, str(tmp_path / "r.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(onnxruntime_runner(tmp_path / "r.onnx")(x)[0], onnxruntime_runner(path)(x)[0],
                               rtol=1e-5, atol=1e-6)


# --- the pipeline and the benchmark ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """A run folder as `compress --quantize int8` leaves it: dense baseline, slim float and slim INT8 models."""
    from edgeprune.export.quantize import quantize_onnx

    d = tmp_path_factory.mktemp("run")
    dense, slim = create_model("tiny-resnet").eval(), create_model("tiny-cnn").eval()
    for model, stem in ((dense, "baseline"), (slim, "model")):
        torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(d / f"{stem}.onnx"), dynamo=False,
                          external_data=False)
        save_checkpoint(d / f"{stem}.pt", model, meta={"input_shape": [1, 8, 8]})
    calib = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    quantize_onnx(d / "model.onnx", d / "model.int8.onnx", QuantizeConfig(), calib)
    (d / "report.md").write_text("# tiny run\n")
    return d


FAST = ["--runs", "20", "--warmup", "2", "--warmup-seconds", "0", "--block-size", "5"]


def test_bench_of_a_run_folder_compares_dense_slim_and_int8(int8_run, capsys):
    from edgeprune.cli import main

    assert main(["bench", str(int8_run), *FAST]) == 0
    out = capsys.readouterr().out
    d = json.loads((int8_run / "bench" / "cpu" / "bench.json").read_text())
    assert [(m["role"], Path(m["path"]).name) for m in d["models"]] == [
        ("baseline", "baseline.onnx"), ("model", "model.onnx"), ("model", "model.int8.onnx")]
    assert all(m["runs"] == 20 and len(m["samples_ms"]) == 20 for m in d["models"])
    for m in d["models"][1:]:  # each speedup over the dense baseline, with its block interval
        sp = m["speedup"]
        assert sp["interval_unit"] == "block" and sp["ci95"]["median"][0] <= sp["median"] <= sp["ci95"]["median"][1]
    # One alternating run: dense, slim, INT8, dense, slim, INT8, …
    assert [b["model"] for b in d["block_order"]] == [0, 1, 2] * 4
    assert "slim INT8 (model.int8.onnx)" in out
    assert "model.int8.onnx" in (int8_run / "report.md").read_text()
    # The torch runtime has no INT8 model: it compares the two checkpoints only.
    assert main(["bench", str(int8_run), "--runtime", "torch", *FAST]) == 0
    assert len(json.loads((int8_run / "bench" / "cpu" / "bench.json").read_text())["models"]) == 2


def test_ort_c_runner_loads_a_qdq_model_and_matches_python(int8_run, native_ort_c_bundle, tmp_path):
    """The on-device runner (built natively here, the same C source as the phone's) runs the QDQ model and gives
    the outputs Python's ONNX Runtime gives."""
    import subprocess

    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = subprocess.run(["sh", str(native_ort_c_bundle / "run.sh"), "--model", str(int8_run / "model.int8.onnx"),
                           "--runs", "5", "--warmup", "1", "--input", str(tmp_path / "in.bin"), "--dump-output",
                           str(tmp_path / "out.bin")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("INFER ")]) == 5
    want = _ort(int8_run / "model.int8.onnx", x)
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bench_device_adb_runs_the_three_models_with_the_ort_c_runner(int8_run, make_device, native_ort_c_bundle,
                                                                      tmp_path, capsys):
    from edgeprune.cli import main

    device = make_device(props={"ro.product.cpu.abi": "x86_64", "ro.product.cpu.abilist": "x86_64,arm64-v8a",
                                "ro.product.cpu.abilist64": "x86_64,arm64-v8a"}, machine="x86_64")
    run = tmp_path / "run"
    shutil.copytree(int8_run, run, ignore=shutil.ignore_patterns("bench"))
    rc = main(["bench", str(run), "--device", "adb", "--serial", device.serial, "--runner",
               f"ort-c:{native_ort_c_bundle}", "--runs", "20", "--warmup", "2", "--cooldown-seconds", "0"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    d = json.loads((run / "bench" / "adb" / "bench.json").read_text())
    assert [m["role"] for m in d["models"]] == ["baseline", "model", "model"]
    assert all(m["runtime"] == "ort-c" and len(m["samples_ms"]) == 20 for m in d["models"])
    assert all(m["speedup"]["median"] > 0 for m in d["models"][1:])
    assert sorted(Path(m["path"]).suffix for m in d["models"]) == [".onnx"] * 3
    assert "model.int8.onnx" in captured.out


@pytest.mark.qemu
@pytest.mark.slow
def test_arm64_runner_runs_the_int8_onnx_and_its_arm_ort_under_qemu(int8_run, arm64_bundle, qemu_sandbox, tmp_path):
    """The phone's runner binary (aarch64 ONNX Runtime, ARM INT8 kernels) loads the QDQ .onnx and the ARM-targeted
    INT8 .ort and computes what ONNX Runtime computes here, up to INT8 rounding."""
    from android_bench.runners.ort_c import parse_report
    from edgeprune.export.ort_format import build_ort

    bundle, run = arm64_bundle, qemu_sandbox
    shutil.copy(int8_run / "model.int8.onnx", tmp_path / "q.onnx")
    build_ort(tmp_path / "q.onnx", tmp_path / "q.ort")
    x = np.random.default_rng(2).standard_normal((4, 1, 1, 8, 8)).astype(np.float32)  # the model's batch is 1
    want = _ort(tmp_path / "q.onnx", x.reshape(4, 1, 8, 8))
    for name in ("q.onnx", "q.ort"):
        got = []
        for i, sample in enumerate(x):
            (tmp_path / "in.bin").write_bytes(sample.tobytes())
            proc = run(f"sh {bundle}/run.sh --model {name} --runs 2 --warmup 1 --threads 1 --input in.bin "
                       "--dump-output out.bin", tmp_path)
            assert proc.returncode == 0, proc.stderr
            assert parse_report(proc.stdout).complete
            got.append(np.fromfile(tmp_path / "out.bin", dtype=np.float32))
        got = np.stack(got)
        assert got.shape == want.shape and _within_tolerance(got, want), name
        assert np.array_equal(got.argmax(1), want.argmax(1)), name


@pytest.mark.realdata
def test_compress_stage_quantize_writes_int8_and_the_report_rows(tmp_path):
    """`compress --quantize int8` on the tiny synthetic task: model.int8.*, compress.json verdict, report rows."""
    from tests.test_compress import _config, trained_baseline

    from edgeprune.pipeline import StageOptions, run_compress

    class Factory:
        def mktemp(self, name):
            p = tmp_path / name
            p.mkdir()
            return p

    data, base = trained_baseline(Factory(), "tiny-cnn", sizes=(320, 120, 300))
    run = tmp_path / "run"
    options = StageOptions(export_formats=("onnx", "ort"),
                           quantize=QuantizeConfig(calibration_samples=64, max_drop=5.0).to_dict())
    summary = run_compress(base, run, _config(max_epochs=2), data=data, options=options)
    assert summary["int8"]["shipped"] and summary["int8"]["passed"]
    for name in ("model.onnx", "model.int8.onnx", "model.int8.ort", "model.int8.7z", "model.int8.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "compress.json").read_text())["int8"]["drop_pt"] == summary["int8"]["drop_pt"]
    assert json.loads((run / "manifest.json").read_text())["pipeline"]["quantize"]["max_drop"] == 5.0
    report = json.loads((run / "report.json").read_text())
    assert report["int8"]["onnx_7z_bytes"] == (run / "model.int8.7z").stat().st_size
    assert report["int8"]["top1_error"] == summary["int8"]["int8"]["top1_error"]
    text = (run / "report.md").read_text()
    assert "## INT8" in text and "| Slim INT8 |" in text
    # After `edgeprune bench RUN` the INT8 rows of a regenerated report carry the three latencies too.
    from edgeprune.cli import main
    from edgeprune.report import write_report

    assert main(["bench", str(run), *FAST]) == 0
    write_report(run)
    rows = [ln for ln in (run / "report.md").read_text().splitlines() if ln.startswith("| Slim INT8 |")]
    assert len(rows) == 1 and rows[0].rstrip(" |").endswith("×)")
    with pytest.raises(ConfigError, match="calibration"):
        StageOptions(quantize={"calibration": "kl"})


def test_calibration_and_test_batches_read_plain_datasets_like_tensor_splits():
    from edgeprune.export.quantize import calibration_batch, split_batches

    x, y = torch.randn(70, 1, 4, 4), torch.arange(70) % 3
    plain, split = torch.utils.data.TensorDataset(x, y), TensorSplit(x, y)
    np.testing.assert_array_equal(calibration_batch(plain, 16, seed=3), calibration_batch(split, 16, seed=3))
    assert len(calibration_batch(split, 500)) == 70
    a, b = list(split_batches(plain, 32)), list(split_batches(split, 32))
    assert [len(xb) for xb, _ in a] == [32, 32, 6]
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("wrong_f,wrong_q,n,limit,passed", [
    (10, 11, 200, 0.5, True),    # one image of 200 is exactly the 0.5 pt limit
    (12, 13, 200, 0.5, True),    # 100 * (13/200 - 12/200) = 0.5000000000000004
    (10, 12, 200, 0.5, False),   # two images is 1.0 pt
    (0, 3, 1000, 0.3, True),
    (0, 4, 1000, 0.3, False),
    (5, 5, 200, 0.0, True),
])
def test_gate_counts_whole_images(wrong_f, wrong_q, n, limit, passed):
    from edgeprune.export.quantize import gate

    drop, ok = gate(wrong_f / n, wrong_q / n, n, limit)
    assert ok is passed
    assert drop == pytest.approx(100.0 * (wrong_q - wrong_f) / n)
