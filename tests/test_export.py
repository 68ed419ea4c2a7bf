"""Export to .onnx / .7z / .ptl / .ort: every zoo model, validated independently of the exporter's own checks."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgeprune.errors import ConfigError, ExportError
from edgeprune.export import export_all, export_onnx, export_ort, export_ptl, lzma_7z_bytes
from edgeprune.models import create_model, input_shape_of

SMALL = ["tiny-mlp", "tiny-cnn", "tiny-resnet", "lenet300", "lenet5", "resnet32-cifar", "unet-small"]
BIG = ["vgg16-cifar", "vgg16-cifar-fc2", "alexnet-cifar"]
WITH_BN = {"tiny-cnn", "tiny-resnet", "resnet32-cifar", "unet-small", "vgg16-cifar", "vgg16-cifar-fc2"}


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so folding BN into the convolution is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _ort_run(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _lite_run(path: Path, x: torch.Tensor) -> np.ndarray:
    from torch.jit.mobile import _load_for_lite_interpreter

    return _load_for_lite_interpreter(str(path))(x).detach().numpy()


def _assert_close(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.abs(want).max()))


def _only_final_files(out: Path, expected: set[str]) -> None:
    assert {p.name for p in out.iterdir()} == expected  # no temp files or folders, no external data


def _check_onnx_file(path: Path, bn_free: bool) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    ops = {n.op_type for n in proto.graph.node}
    assert not any(d.domain.startswith("pkg.onnxscript") for d in proto.functions)
    if bn_free:
        assert "BatchNormalization" not in ops  # folded into the convolutions


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo_models_export_to_all_formats_and_match(name, tmp_path):
    model = create_model(name).eval()
    _randomize_bn(model)
    shape = input_shape_of(name)
    dynamic = name in ("tiny-cnn", "lenet5", "unet-small")
    real = torch.randn(3, *shape) * 2 + 0.3
    result = export_all(model, tmp_path, "model", shape, real_batch=real, dynamic_batch=dynamic)
    _only_final_files(tmp_path, {"model.onnx", "model.7z", "model.ptl", "model.ort"})
    for key, size_key in (("onnx", "onnx_bytes"), ("7z", "onnx_7z_bytes"), ("ptl", "ptl_bytes"), ("ort", "ort_bytes")):
        assert result[size_key] == (tmp_path / f"model.{key}").stat().st_size > 0
    assert set(result["max_abs_diff"]) == {"onnx", "ptl", "ort"}
    assert "real" in result["validated_on"]
    _check_onnx_file(tmp_path / "model.onnx", bn_free=name in WITH_BN)
    assert result["params_total"] == sum(p.numel() for p in model.parameters())
    # Independent check on a fresh input, with the runtimes an app would use.
    x = torch.randn(2 if dynamic else 1, *shape)
    with torch.no_grad():
        want = model(x)
    _assert_close(_ort_run(tmp_path / "model.onnx", x), want)
    _assert_close(_ort_run(tmp_path / "model.ort", x), want)
    _assert_close(_lite_run(tmp_path / "model.ptl", x), want)


@pytest.mark.parametrize("name", BIG)
def test_big_zoo_models_export_to_onnx(name, tmp_path):
    model = create_model(name).eval()
    _randomize_bn(model)
    shape = input_shape_of(name)
    info = export_onnx(model, tmp_path / "big.onnx", shape)
    _only_final_files(tmp_path, {"big.onnx"})
    assert info["bytes"] == (tmp_path / "big.onnx").stat().st_size
    assert info["bytes"] > 4 * sum(p.numel() for p in model.parameters()) * 0.95  # float32 weights inside the file
    _check_onnx_file(tmp_path / "big.onnx", bn_free=name in WITH_BN)
    x = torch.randn(1, *shape)
    with torch.no_grad():
        _assert_close(_ort_run(tmp_path / "big.onnx", x), model(x))


def test_masked_model_zeros_shrink_the_7z_not_the_onnx(tmp_path):
    """SeReNe's observation: whole zero rows/columns barely change .onnx but LZMA squeezes them out."""
    dense = create_model("lenet300").eval()
    masked = create_model("lenet300").eval()
    masked.load_state_dict(dense.state_dict())
    with torch.no_grad():
        masked[1].weight[:, 100:] = 0        # 684 of 784 input columns of FC1 pruned
        masked[1].weight[150:] = 0           # and 150 of its 300 neurons
        masked[1].bias[150:] = 0
        masked[3].weight[:, 150:] = 0
    d = export_all(dense, tmp_path / "dense", "model", (1, 28, 28), formats=("onnx",))
    m = export_all(masked, tmp_path / "masked", "model", (1, 28, 28), formats=("onnx", "ptl", "ort"))
    assert abs(m["onnx_bytes"] - d["onnx_bytes"]) < 0.01 * d["onnx_bytes"]
    assert m["onnx_7z_bytes"] < 0.4 * d["onnx_7z_bytes"]
    assert m["params_nonzero"] < 0.3 * m["params_total"]


def _surgery_or_narrow(name: str):
    """A slim model: surgery on a model with killed channels when that stage exists, else narrower widths."""
    shape = input_shape_of(name)
    try:
        from edgeprune.surgery import surgery
        from edgeprune.surgery.synthetic import kill_random_channels
    except ImportError:
        return create_model("lenet300", hidden=(40, 20)), (1, 28, 28)
    model = create_model(name).eval()
    _randomize_bn(model)
    kill_random_channels(model, shape, fraction=0.5, seed=3)
    return surgery(model, shape).model, shape


@pytest.mark.parametrize("name", ["tiny-resnet", "lenet5"])
def test_slim_model_exports_to_all_formats(name, tmp_path):
    slim, shape = _surgery_or_narrow(name)
    dense_params = sum(p.numel() for p in create_model(name).parameters())
    result = export_all(slim, tmp_path, "slim", shape, baseline_params=dense_params)
    assert result["params_total"] < dense_params
    assert result["compression_ratio"] == pytest.approx(dense_params / result["params_nonzero"])
    x = torch.randn(1, *shape)
    with torch.no_grad():
        want = slim(x)
    for suffix in ("onnx", "ort"):
        _assert_close(_ort_run(tmp_path / f"slim.{suffix}", x), want)
    _assert_close(_lite_run(tmp_path / "slim.ptl", x), want)


def test_7z_is_a_real_lzma_archive_of_the_onnx(tmp_path):
    import py7zr

    export_all(create_model("tiny-cnn"), tmp_path, "m", (1, 8, 8), formats=("onnx",))
    archive = tmp_path / "m.7z"
    assert archive.read_bytes()[:6] == b"7z\xbc\xaf\x27\x1c"
    with py7zr.SevenZipFile(archive) as zf:
        assert zf.getnames() == ["m.onnx"]
        assert "LZMA" in " ".join(zf.archiveinfo().method_names)
        zf.extractall(tmp_path / "py7zr")
    assert (tmp_path / "py7zr" / "m.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert lzma_7z_bytes(tmp_path / "m.onnx") > 0
    seven = shutil.which("7z")
    if seven is None:
        pytest.skip("the system 7z (p7zip-full) is not on PATH")
    subprocess.run([seven, "x", "-y", f"-o{tmp_path / 'sys'}", str(archive)], check=True, capture_output=True)
    assert (tmp_path / "sys" / "m.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


def test_dynamic_batch_accepts_any_batch_and_static_does_not(tmp_path):
    model = create_model("tiny-cnn").eval()
    export_onnx(model, tmp_path / "dyn.onnx", (1, 8, 8), dynamic_batch=True)
    export_onnx(model, tmp_path / "fix.onnx", (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        _assert_close(_ort_run(tmp_path / "dyn.onnx", x), model(x))
    with pytest.raises(Exception):
        _ort_run(tmp_path / "fix.onnx", x)


def test_export_ptl_and_export_ort_on_their_own(tmp_path):
    model = create_model("tiny-mlp").eval()
    info = export_ptl(model, tmp_path / "a.ptl", (1, 4, 4))
    assert info["optimize_for_mobile"] == "applied" or info["optimize_for_mobile"].startswith("skipped: ")
    export_onnx(model, tmp_path / "a.onnx", (1, 4, 4))
    ort_info = export_ort(tmp_path / "a.onnx")
    assert Path(ort_info["path"]) == tmp_path / "a.ort"
    x = torch.randn(1, 1, 4, 4)
    with torch.no_grad():
        _assert_close(_ort_run(tmp_path / "a.ort", x), model(x))
    _assert_close(_lite_run(tmp_path / "a.ptl", x), model(x))
    _only_final_files(tmp_path, {"a.ptl", "a.onnx", "a.ort"})


def test_slimming_is_recorded_and_can_be_switched_off(tmp_path):
    model = create_model("tiny-resnet").eval()
    on = export_onnx(model, tmp_path / "on.onnx", (1, 8, 8))
    off = export_onnx(model, tmp_path / "off.onnx", (1, 8, 8), slim=False)
    assert off["slim"] == "off"
    assert on["slim"].startswith("applied") or on["slim"].startswith("skipped: ")
    if on["slim"].startswith("applied"):
        assert on["nodes"] <= off["nodes"]


# --- failure paths -------------------------------------------------------------------------------------------------


class Histogram(nn.Module):
    """torch.histc has no ONNX conversion."""

    def forward(self, x):
        return torch.histc(x, bins=4)


class SignBranch(nn.Module):
    """Data-dependent control flow: tracing records only the branch the example input took."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        if float(x.sum()) > 0:
            return y * 2.0
        return -y


class PythonRandom(nn.Module):
    """Python randomness: tracing freezes one draw as a constant."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) * random.uniform(1.0, 100.0)


def test_unsupported_operator_is_one_clear_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ExportError, match="histc") as err:
        export_all(Histogram(), tmp_path, "h", (1, 4, 4))
    assert "\n" not in str(err.value)
    assert "ORT format skipped" in str(err.value)  # every format that could not be made is named in the one error
    assert "ptl" not in str(err.value)  # the lite interpreter handles histc: no complaint about it
    _only_final_files(tmp_path, set())


def test_output_that_changes_on_export_lists_every_mismatch_in_one_error(tmp_path):
    real = torch.cat([torch.rand(2, 1, 4, 4) + 0.1, -torch.rand(2, 1, 4, 4) - 0.1])  # both signs: one branch is wrong
    with pytest.raises(ExportError) as err:
        export_all(SignBranch(), tmp_path, "b", (1, 4, 4), real_batch=real)
    msg = str(err.value)
    for artifact in ("b.onnx", "b.ptl", "b.ort"):
        assert f"{artifact} on real" in msg
    assert "real" in msg and "max|Δ|" in msg
    _only_final_files(tmp_path, set())


def test_python_randomness_is_caught(tmp_path):
    random.seed(0)
    with pytest.raises(ExportError, match="mismatch"):
        export_onnx(PythonRandom(), tmp_path / "r.onnx", (1, 4, 4))
    _only_final_files(tmp_path, set())


def test_failed_export_keeps_a_previous_good_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(Histogram(), target, (1, 4, 4))
    assert target.read_bytes() == b"previous"
    _only_final_files(tmp_path, {"m.onnx"})


def test_bad_arguments_raise_config_errors(tmp_path):
    model = create_model("tiny-mlp")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", (1, 4, 4), opset=13)
    with pytest.raises(ConfigError, match="format"):
        export_all(model, tmp_path, "m", (1, 4, 4), formats=("tflite",))
    with pytest.raises(ExportError, match="input of shape"):
        export_all(model, tmp_path, "m", (3, 32, 32))
    with pytest.raises(ConfigError):
        export_onnx(model, tmp_path / "m.txt", (1, 4, 4))
    _only_final_files(tmp_path, set())


def test_export_does_not_modify_the_model():
    model = create_model("tiny-cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        export_all(model, d, "m", (1, 8, 8), formats=("onnx",))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.cli import main

    model = create_model("tiny-cnn")
    ckpt = save_checkpoint(tmp_path / "model.pt", model, meta={"input_shape": [1, 8, 8]})
    out = tmp_path / "out"
    assert main(["export", str(ckpt), "--format", "onnx,ort", "--out", str(out), "--dynamic-batch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["artifacts"]) == {"onnx", "7z", "ort"}
    assert sorted(p.name for p in out.iterdir()) == ["model.7z", "model.onnx", "model.ort"]
    assert main(["export", "tiny-mlp", "--format", "ptl", "--out", str(out), "--no-slim"]) == 0
    assert (out / "tiny-mlp.ptl").is_file()
    assert "tiny-mlp.ptl" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    from edgeprune.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert main(["export", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "corrupt" in err
    assert main(["export", "tiny-mlp", "--format", "onnx,tflite", "--out", str(tmp_path / "o")]) == 1
    assert "tflite" in capsys.readouterr().err
    assert main(["export", "tiny-mlp", "--input-shape", "3,x", "--out", str(tmp_path / "o")]) == 1
    assert "--input-shape" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.realdata
def test_real_fashion_mnist_samples_join_validation(tmp_path):
    from edgeprune.cli.export import _real_batch

    real = _real_batch({"dataset": "fashion-mnist"}, 8)
    assert real.shape == (8, 1, 28, 28)
    result = export_all(create_model("lenet5"), tmp_path, "m", (1, 28, 28), formats=("onnx",), real_batch=real)
    assert "real" in result["validated_on"]


def test_cli_exports_masked_and_slim_checkpoints(tmp_path, capsys):
    surgery_mod = pytest.importorskip("edgeprune.surgery")
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.cli import main
    from edgeprune.surgery.synthetic import kill_random_channels

    masked = create_model("tiny-resnet").eval()
    _randomize_bn(masked)
    kill_random_channels(masked, (1, 8, 8), fraction=0.5, seed=4)
    save_checkpoint(tmp_path / "masked.pt", masked, meta={"input_shape": [1, 8, 8]})
    surgery_mod.surgery_checkpoint(tmp_path / "masked.pt", tmp_path / "model.pt")
    for stem in ("masked", "model"):
        assert main(["export", str(tmp_path / f"{stem}.pt"), "--out", str(tmp_path / "out"), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert set(result["artifacts"]) == {"onnx", "7z", "ptl", "ort"}
        assert all(v <= 1e-4 for v in result["max_abs_diff"].values())
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        want = masked(x)
    # The slim model's files compute what the masked model computes, with fewer parameters.
    for stem in ("masked", "model"):
        _assert_close(_ort_run(tmp_path / "out" / f"{stem}.ort", x), want)
        _assert_close(_lite_run(tmp_path / "out" / f"{stem}.ptl", x), want)
    assert (tmp_path / "out" / "model.onnx").stat().st_size < (tmp_path / "out" / "masked.onnx").stat().st_size
