"""`edgeprune bench`: one-line errors, run folders (bench.json + report.md section), Ctrl-C keeps the samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from edgeprune.checkpoint import save_checkpoint
from edgeprune.cli import main
from edgeprune.models import create_model

FAST = ["--runs", "20", "--warmup", "2", "--warmup-seconds", "0", "--block-size", "5"]


def _export(model, path):
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path), dynamo=False, external_data=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    dense, slim = create_model("tiny-resnet").eval(), create_model("tiny-cnn").eval()
    _export(dense, d / "baseline.onnx")
    _export(slim, d / "model.onnx")
    save_checkpoint(d / "baseline.pt", dense, meta={"input_shape": [1, 8, 8]})
    save_checkpoint(d / "model.pt", slim, meta={"input_shape": [1, 8, 8]})
    (d / "report.md").write_text("# tiny run\n\nsome results\n")
    return d


def _error_line(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_one_line_errors(run_dir, tmp_path, capsys):
    assert "no such file" in _error_line(capsys, ["bench", str(tmp_path / "missing.onnx")])
    err = _error_line(capsys, ["bench", str(run_dir / "model.onnx"), "--input-shape", "3,32,32", *FAST])
    assert "does not accept input of shape (1, 3, 32, 32)" in err and "--input-shape" in err
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    assert "unsupported model format '.tflite'" in _error_line(capsys, ["bench", str(tmp_path / "m.tflite")])
    # No --serial means USB; without the usb extra the line says how to install it or use Wi-Fi.
    assert "--serial" in _error_line(capsys, ["bench", str(run_dir / "model.onnx"), "--device", "adb"])
    assert "--runtime" in _error_line(capsys, ["bench", str(run_dir / "model.onnx"), "--runtime", "tflite"])
    assert "--runs" in _error_line(capsys, ["bench", str(run_dir / "model.onnx"), "--runs", "0"])
    assert "--input-shape" in _error_line(capsys, ["bench", str(run_dir / "model.onnx"), "--input-shape", "a,b"])


def test_files_with_json_and_plot(run_dir, tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", str(run_dir / "model.pt"), "--baseline", str(run_dir / "baseline.pt"), "--runtime", "torch",
               "--threads", "1", "--json", str(out), "--plot", str(png), *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    d = json.loads(out.read_text())
    assert [m["label"] for m in d["models"]] == ["baseline.pt", "model.pt"]
    assert all(m["runs"] == 20 and m["runtime"] == "torch" and m["threads"] == 1 for m in d["models"])
    for m in d["models"]:
        s = np.asarray(m["samples_ms"])
        assert m["median_ms"] == pytest.approx(np.median(s)) and m["p99_ms"] == pytest.approx(np.quantile(s, 0.99))
    assert [b["model"] for b in d["block_order"]] == [0, 1] * 4
    assert d["speedup"]["interval_unit"] == "block" and d["speedup"]["block_pairs"] == 4
    assert d["warmup_seconds"] == 0.0 and all(m["block_counts"] == [5] * 4 for m in d["models"])
    assert f"{d['speedup']['median']:.2f}×" in printed and "baseline.pt" in printed
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_run_folder_writes_bench_json_and_report_section(run_dir, capsys):
    for _ in range(2):  # a rerun replaces the report section
        assert main(["bench", str(run_dir), *FAST]) == 0
    capsys.readouterr()
    d = json.loads((run_dir / "bench" / "cpu" / "bench.json").read_text())
    assert [(m["role"], m["path"]) for m in d["models"]] == [
        ("baseline", str(run_dir / "baseline.onnx")), ("model", str(run_dir / "model.onnx"))]
    assert d["speedup"]["ci95"]["median"][0] <= d["speedup"]["median"] <= d["speedup"]["ci95"]["median"][1]
    assert (run_dir / "bench" / "cpu" / "latency.png").exists()
    text = (run_dir / "report.md").read_text()
    assert text.startswith("# tiny run\n\nsome results\n")
    assert text.count("<!-- bench:cpu -->") == 1 and text.count("<!-- /bench:cpu -->") == 1
    assert f"{d['speedup']['median']:.2f}×" in text
    # Without ONNX files (runtime torch) the checkpoints are compared.
    assert main(["bench", str(run_dir), "--runtime", "torch", *FAST]) == 0
    d = json.loads((run_dir / "bench" / "cpu" / "bench.json").read_text())
    assert [m["format"] for m in d["models"]] == ["checkpoint", "checkpoint"]


def test_ctrl_c_keeps_measured_samples(run_dir, tmp_path):
    out = tmp_path / "partial.json"
    requested = 2_000_000  # far more than can finish before the interrupt
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeprune", "bench", str(run_dir / "model.onnx"), "--runs", str(requested),
         "--warmup", "0", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        for line in proc.stderr:  # the timing loop announces itself
            if "measuring" in line:
                break
        time.sleep(1.0)  # let some runs complete (the exact count does not matter)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    d = json.loads(out.read_text())
    assert d["interrupted"] is True
    (m,) = d["models"]
    assert m["runs"] < requested and len(m["samples_ms"]) == m["runs"]
    assert m["runs_requested"] == requested
    if m["runs"]:
        assert m["mean_ms"] == pytest.approx(np.mean(m["samples_ms"]))
    assert sum(b["count"] for b in d["block_order"]) == m["runs"]
    assert "INTERRUPTED" in stdout


def test_run_folder_resolution(tmp_path):
    from edgeprune.bench import resolve_run_folder
    from edgeprune.errors import BenchError

    for name in ("model.pt", "baseline.pt", "model.ptl"):
        (tmp_path / name).write_bytes(b"x")
    slim, dense = resolve_run_folder(tmp_path, "onnxruntime")  # no ONNX files: the checkpoints
    assert (slim.path.name, slim.role, dense.path.name, dense.role) == ("model.pt", "model", "baseline.pt", "baseline")
    slim, dense = resolve_run_folder(tmp_path, "ptl")  # the lite file where there is one, else the checkpoint
    assert (slim.path.name, dense.path.name) == ("model.ptl", "baseline.pt")
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert resolve_run_folder(tmp_path, "onnxruntime")[0].path.name == "model.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchError, match="holds no model"):
        resolve_run_folder(empty, "torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown when no GPU is present")
def test_cuda_without_gpu_is_one_line(run_dir, capsys):
    err = _error_line(capsys, ["bench", str(run_dir / "model.pt"), "--device", "cuda", "--runtime", "torch", *FAST])
    assert "no CUDA device" in err
    assert "--runtime torch" in _error_line(capsys, ["bench", str(run_dir / "model.onnx"), "--device", "cuda"])


def test_bench_help_tells_of_the_int8_model_and_how_to_leave_it_out():
    env = dict(os.environ, COLUMNS="200")
    out = subprocess.run([sys.executable, "-m", "edgeprune", "bench", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "model.int8.onnx" in text and "third model" in text and "To leave it out" in text
