"""The ONNX Runtime C runner, built natively for x86_64 against the real libonnxruntime, compared with Python ORT."""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from android_bench.errors import RunnerOutputError
from android_bench.runner_build import ELF_MACHINE, build_bundle, bundle_files, default_ort_version
from android_bench.runners.ort_c import parse_report

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="the native runner build is x86_64 Linux only")


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])  # set for the whole run by conftest.py


def make_cnn(path: pathlib.Path, *, channels=8, hw=8, batch="N", seed=0, input_type=None) -> pathlib.Path:
    """Conv -> Relu -> Flatten -> Gemm with random weights; batch dim symbolic unless an int is given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(channels).astype(np.float32)
    g = rng.standard_normal((10, channels * (hw - 2) ** 2)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["logits"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", input_type or TensorProto.FLOAT, [batch, 3, hw, hw])]
    if input_type is not None and input_type != TensorProto.FLOAT:
        nodes.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        nodes[1] = helper.make_node("Conv", ["xf", "W", "B"], ["c"])
    graph = helper.make_graph(
        nodes, "cnn", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"), numpy_helper.from_array(g, "G")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def python_ort(model: pathlib.Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="session")
def native_bundle() -> pathlib.Path:
    t0 = time.monotonic()
    path = build_bundle("x86_64", _cache_dir())
    print(f"native bundle {path} ready in {time.monotonic() - t0:.1f}s")
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("runner_models")
    return {
        "small": make_cnn(d / "small.onnx"),
        "fixed": make_cnn(d / "fixed.onnx", batch=1, seed=1),
        "bench": make_cnn(d / "bench.onnx", channels=32, hw=32, batch=1, seed=2),
    }


def run(bundle: pathlib.Path, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", str(bundle / "run.sh"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"runner failed ({proc.returncode}): {proc.stderr}")
    return proc


def test_bundle_layout_and_cache_reuse(native_bundle):
    names = {p.as_posix() for p in bundle_files(native_bundle)}
    assert names == {"run.sh", "edgeprune_ort_runner", "lib/libonnxruntime.so.1"}
    head = (native_bundle / "edgeprune_ort_runner").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == ELF_MACHINE["x86_64"]
    mtime = (native_bundle / "BUNDLE.json").stat().st_mtime_ns
    t0 = time.monotonic()
    again = build_bundle("x86_64", _cache_dir())
    assert again == native_bundle
    assert (native_bundle / "BUNDLE.json").stat().st_mtime_ns == mtime, "a matching cached bundle was rebuilt"
    assert time.monotonic() - t0 < 5


def test_version_line(native_bundle):
    out = run(native_bundle, "--version").stdout.splitlines()
    assert out[0] == "EDGEPRUNE_RUNNER 1"
    tag, version, api = out[1].split()
    assert tag == "ORT_VERSION" and version == default_ort_version()
    assert 4 <= int(api.removeprefix("api=")) <= int(version.split(".")[1])


def test_documented_format_and_agreement_with_python(native_bundle, models, tmp_path):
    x = np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = run(native_bundle, "--model", models["small"], "--runs", 37, "--warmup", 3, "--threads", 1,
               "--input", tmp_path / "in.bin", "--dump-output", tmp_path / "out.bin")
    lines = proc.stdout.splitlines()
    assert lines[0] == "EDGEPRUNE_RUNNER 1"
    assert lines[-1] == "END"
    assert [ln.split()[0] for ln in lines[1:6]] == ["ORT_VERSION", "MODEL", "THREADS", "INPUT", "WARMUP"]
    infer = [ln for ln in lines if ln.startswith("INFER ")]
    assert len(infer) == 37
    for i, ln in enumerate(infer):
        tag, idx, ms = ln.split()
        assert int(idx) == i and len(ms.split(".")[1]) == 6 and float(ms) > 0

    report = parse_report(proc.stdout)
    assert report.complete and report.threads == 1 and report.warmup == 3
    assert report.inputs == {"x": (1, 3, 8, 8)}
    assert len(report.samples_ms) == 37
    assert report.summary["mean_ms"] == pytest.approx(statistics.mean(report.samples_ms), abs=2e-6)
    assert report.summary["median_ms"] == pytest.approx(statistics.median(report.samples_ms), abs=2e-6)
    assert report.summary["min_ms"] == min(report.samples_ms) and report.summary["max_ms"] == max(report.samples_ms)

    expected = python_ort(models["small"], x)
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    (out,) = report.outputs
    assert out.name == "logits" and out.shape == (1, 10) and out.dtype == "float32"
    np.testing.assert_allclose(out.first, expected.ravel()[:8], rtol=1e-6, atol=1e-6)
    assert out.sum == pytest.approx(float(expected.sum(dtype=np.float64)), rel=1e-5, abs=1e-4)


def test_fixed_random_input_is_reproducible_and_matches_python(native_bundle, models, tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    out_a = tmp_path / "out_a.bin"
    run(native_bundle, models["fixed"], "--runs", 2, "--warmup", 0, "--dump-input", a, "--dump-output", out_a)
    run(native_bundle, models["fixed"], "--runs", 1, "--warmup", 0, "--dump-input", b)
    run(native_bundle, models["fixed"], "--runs", 1, "--warmup", 0, "--seed", 43, "--dump-input", c)
    xa = np.fromfile(a, dtype=np.float32)
    assert xa.size == 3 * 8 * 8 and np.all(np.abs(xa) <= 1.0) and xa.std() > 0.3
    assert a.read_bytes() == b.read_bytes(), "the default pseudo-random input must not change between runs"
    assert a.read_bytes() != c.read_bytes(), "--seed must change the input"
    expected = python_ort(models["fixed"], xa.reshape(1, 3, 8, 8))
    np.testing.assert_allclose(np.fromfile(out_a, dtype=np.float32).reshape(expected.shape), expected,
                               rtol=1e-5, atol=1e-5)


def test_dynamic_dims_and_input_shape(native_bundle, models, tmp_path):
    report = parse_report(run(native_bundle, models["small"], "--runs", 1, "--warmup", 0).stdout)
    assert report.inputs == {"x": (1, 3, 8, 8)} and report.outputs[0].shape == (1, 10)
    report = parse_report(run(native_bundle, models["small"], "--runs", 2, "--warmup", 0,
                              "--input-shape", "4,3,8,8", "--dump-input", tmp_path / "x.bin",
                              "--dump-output", tmp_path / "y.bin").stdout)
    assert report.inputs == {"x": (4, 3, 8, 8)} and report.outputs[0].shape == (4, 10)
    x = np.fromfile(tmp_path / "x.bin", dtype=np.float32).reshape(4, 3, 8, 8)
    expected = python_ort(models["small"], x)
    np.testing.assert_allclose(np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(4, 10), expected,
                               rtol=1e-5, atol=1e-5)

    bad = run(native_bundle, models["fixed"], "--input-shape", "2,3,8,8", check=False)
    assert bad.returncode == 2 and "conflicts with the fixed dim 0" in bad.stderr
    bad = run(native_bundle, models["small"], "--input-shape", "1,3,8", check=False)
    assert bad.returncode == 2 and "has 3 dims but input x has rank 4" in bad.stderr


def test_ort_format_model(native_bundle, models, tmp_path):
    src = tmp_path / "m.onnx"
    shutil.copy(models["fixed"], src)
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src)],
                   check=True, capture_output=True, cwd=tmp_path, timeout=300)
    ort_model = next(tmp_path.glob("m*.ort"))
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    report = parse_report(run(native_bundle, ort_model, "--runs", 3, "--warmup", 1, "--input", tmp_path / "in.bin",
                              "--dump-output", tmp_path / "out.bin").stdout)
    assert len(report.samples_ms) == 3
    expected = python_ort(models["fixed"], x)
    np.testing.assert_allclose(np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(1, 10), expected,
                               rtol=1e-5, atol=1e-5)


def test_errors_are_clear(native_bundle, models, tmp_path):
    missing = run(native_bundle, tmp_path / "nope.onnx", check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error: cannot load model {tmp_path / 'nope.onnx'}: No such file")
    assert missing.stdout == ""

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    proc = run(native_bundle, corrupt, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: cannot load model {corrupt}: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Protobuf" in proc.stderr
    with pytest.raises(RunnerOutputError, match="no 'EDGEPRUNE_RUNNER' header"):
        parse_report(proc.stdout + proc.stderr)

    from onnx import TensorProto

    int_model = make_cnn(tmp_path / "int.onnx", input_type=TensorProto.INT64)
    proc = run(native_bundle, int_model, check=False)
    assert proc.returncode == 1 and "only float32 inputs are supported" in proc.stderr

    wrong_size = tmp_path / "short.bin"
    wrong_size.write_bytes(b"\0" * 12)
    proc = run(native_bundle, models["fixed"], "--input", wrong_size, check=False)
    assert proc.returncode == 1 and "has 12 bytes, expected 768" in proc.stderr

    for args, text in [(["--runs", "0"], "invalid value for --runs"), (["--bogus"], "unknown option --bogus"),
                       ([], "no model given"), (["--threads"], "option --threads needs a value")]:
        proc = run(native_bundle, *args, check=False)
        assert proc.returncode == 2 and text in proc.stderr, (args, proc.stderr)


def test_threads_option(native_bundle, models):
    report = parse_report(run(native_bundle, models["bench"], "--runs", 5, "--warmup", 1, "--threads", 2).stdout)
    assert report.threads == 2 and len(report.samples_ms) == 5


def test_latency_close_to_python_ort(native_bundle, models):
    """Same model, same thread count: the C runner's median is within 0.2x-5x of Python ORT's (printed)."""
    import onnxruntime as ort

    model = models["bench"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"x": x})
    py = []
    for _ in range(200):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        py.append((time.perf_counter() - t0) * 1e3)
    report = parse_report(run(native_bundle, model, "--runs", 200, "--warmup", 20, "--threads", 1).stdout)
    c_median, py_median = statistics.median(report.samples_ms), statistics.median(py)
    ratio = c_median / py_median
    print(f"latency: C runner median {c_median:.4f} ms, Python ORT median {py_median:.4f} ms, ratio {ratio:.2f}")
    assert len(report.samples_ms) == 200
    assert 0.2 <= ratio <= 5.0
