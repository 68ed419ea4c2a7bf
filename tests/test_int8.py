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
    # A zoo name records no dataset: say what to pass.
    assert main(["export", "tiny-mlp", "--quantize", "int8", "--format", "onnx", "--out", str(tmp_path)]) == 1
    assert "--dataset" in capsys.readouterr().err


def test_dynamic_int8_of_a_linear_model_uses_integer_matmuls(tmp_path):
    """Dynamic quantization needs no calibration: Linear layers (Gemm) become MatMulInteger with int8 weights."""
    import onnx

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3]).argmax(1)
    data = DataBundle("synthetic", TensorSplit(x[:400], y[:400]), TensorSplit(x[400:450], y[400:450]),
                      TensorSplit(x[450:], y[450:]), (1, 4, 4), 3, "")
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
    with torch.no_grad():
        want = model(data.test.x).numpy()
    got = _ort(tmp_path / "mlp.int8.onnx", data.test.x.numpy())
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
