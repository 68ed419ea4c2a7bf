"""Output parsers of the ort-c runner and the official benchmark tools, on samples in tests/data/runner_outputs/
(each file says where its format comes from), plus the runner registry's handling of these names."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from android_bench.errors import RunnerOutputError, UnknownRunnerError
from android_bench.runners import RunSpec, get_runner, known_runners
from android_bench.runners.official import (
    ExecutorchRunner,
    PerfTestRunner,
    TorchSpeedBenchmarkRunner,
    parse_executorch,
    parse_perf_test,
    parse_perf_test_profile,
    parse_torch_speed_benchmark,
)
from android_bench.runners.ort_c import OrtCRunner, parse_report

DATA = pathlib.Path(__file__).parent / "data" / "runner_outputs"


def sample(name: str) -> str:
    return (DATA / name).read_text()


SPEC = RunSpec(model_remote="/data/local/tmp/edgeprune/model.onnx", runs=1000, warmup=10, threads=4, cores="f0",
               workdir="/data/local/tmp/edgeprune", input_shape=(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------------- ort-c


def test_ort_c_parses_samples_with_crlf_and_sentinel():
    report = parse_report(sample("ort_c_ok.txt"))
    assert report.samples_ms == [0.264847, 0.229915, 0.196655, 0.194061, 0.190786]
    assert report.ort_version == "1.31.1" and report.api_version == 29 and report.threads == 1
    assert report.warmup == 2 and report.inputs == {"x": (1, 3, 8, 8)} and report.complete
    assert report.summary["mean_ms"] == pytest.approx(np.mean(report.samples_ms), abs=1e-6)
    (out,) = report.outputs
    assert out.name == "y" and out.shape == (1, 10) and out.first[3] == pytest.approx(53.8374252)
    assert OrtCRunner().parse(sample("ort_c_ok.txt")) == report.samples_ms


@pytest.mark.parametrize("name, message", [
    ("ort_c_truncated.txt", r"truncated: no SUMMARY line after 3 INFER lines"),
    ("ort_c_error.txt", r"no 'EDGEPRUNE_RUNNER' header.*error: cannot load model .*Protobuf parsing failed"),
    ("ort_c_inconsistent.txt", r"INFER index 4 out of order \(expected 3\)"),
])
def test_ort_c_malformed_samples(name, message):
    with pytest.raises(RunnerOutputError, match=message):
        OrtCRunner().parse(sample(name))


def test_ort_c_malformed_variants():
    good = sample("ort_c_ok.txt")
    with pytest.raises(RunnerOutputError, match="format 2 is not supported"):
        parse_report(good.replace("EDGEPRUNE_RUNNER 1", "EDGEPRUNE_RUNNER 2"))
    with pytest.raises(RunnerOutputError, match="SUMMARY says runs=6 but 5 INFER"):
        parse_report(good.replace("SUMMARY runs=5", "SUMMARY runs=6"))
    with pytest.raises(RunnerOutputError, match="malformed line 'INFER 2 fast'"):
        parse_report(good.replace("INFER 2 0.196655", "INFER 2 fast"))
    with pytest.raises(RunnerOutputError, match="invalid time"):
        parse_report(good.replace("INFER 2 0.196655", "INFER 2 -1.0"))
    with pytest.raises(RunnerOutputError, match="no 'EDGEPRUNE_RUNNER' header.*last lines: \\(no output\\)"):
        parse_report("")


def test_ort_c_command_line(tmp_path):
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "edgeprune_ort_runner").write_bytes(b"\x7fELF")
    runner = get_runner(f"ort-c:{tmp_path}")
    cmd = runner.command(SPEC)
    assert cmd.endswith("taskset f0 sh /data/local/tmp/edgeprune/ort_c/run.sh --model "
                        "/data/local/tmp/edgeprune/model.onnx --runs 1000 --warmup 10 --threads 4 "
                        "--input-shape 1,3,32,32")
    assert cmd.startswith("chmod 755 /data/local/tmp/edgeprune/ort_c/run.sh ")
    no_cores = runner.command(RunSpec("m 1.onnx", 5, 0, 1, None, "/w"))
    assert "taskset" not in no_cores and "--model 'm 1.onnx'" in no_cores and "--input-shape" not in no_cores
    assert [r for _, r in runner.files()] == ["ort_c/edgeprune_ort_runner", "ort_c/run.sh"]


# --------------------------------------------------------------------------------------------------- perf_test


def test_perf_test_profile_sample_drops_first_and_warmup():
    samples = PerfTestRunner("/data/local/tmp/onnxruntime_perf_test").parse(sample("perf_test_profile.txt"))
    assert samples == pytest.approx([1.512, 1.490, 1.501])


def test_perf_test_profile_from_real_onnxruntime_profiler(tmp_path):
    """The profile parser on a profile written by the real ONNX Runtime profiler (same code as perf_test's -p)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "edgeprune_perf_test_profile")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), so, providers=["CPUExecutionProvider"])
    for _ in range(7):
        sess.run(None, {"x": np.ones((1, 64), np.float32)})
    profile = pathlib.Path(sess.end_profiling()).read_text()
    whole = parse_perf_test_profile(profile)
    assert len(whole) == 7 and all(ms > 0 for ms in whole)
    grepped = "\n".join(ln for ln in profile.splitlines() if "model_run" in ln)
    assert parse_perf_test_profile(grepped) == whole
    output = ("EDGEPRUNE_EXPECT runs=5 warmup=1\n__EDGEPRUNE_PROFILE_BEGIN__\n" + grepped +
              "\n__EDGEPRUNE_PROFILE_END__\n")
    assert parse_perf_test(output) == whole[2:]


def test_perf_test_summary_fallback(caplog):
    samples = parse_perf_test(sample("perf_test_summary_only.txt"))
    assert len(samples) == 1000 and set(samples) == {1.4731}
    assert "no profile with per-inference times" in caplog.text


@pytest.mark.parametrize("name, message", [
    ("perf_test_malformed.txt", r"neither profile events nor a summary.*No such file or directory"),
    ("perf_test_bad_event.txt", r"expected 2 timed inferences but found 1"),
])
def test_perf_test_malformed(name, message):
    with pytest.raises(RunnerOutputError, match=message):
        parse_perf_test(sample(name))


def test_perf_test_damaged_event_line():
    with pytest.raises(RunnerOutputError, match="malformed event line"):
        parse_perf_test_profile('{"cat" : "Session","dur" :12,"name" :"model_run",\n')


def test_perf_test_command():
    cmd = get_runner("perf_test:/data/local/tmp/onnxruntime_perf_test").command(SPEC)
    assert cmd.startswith("echo EDGEPRUNE_EXPECT runs=1000 warmup=10; ")
    assert ("taskset f0 /data/local/tmp/onnxruntime_perf_test -I -m times -r 1010 -x 4 -p "
            "edgeprune_perf_test_profile /data/local/tmp/edgeprune/model.onnx; rc=$?;") in cmd
    assert cmd.rstrip().endswith("exit $rc )")


# ---------------------------------------------------------------------------------------- speed_benchmark_torch


def test_torch_speed_benchmark_sample():
    samples = TorchSpeedBenchmarkRunner("/x/speed_benchmark_torch").parse(sample("torch_speed_benchmark.txt"))
    assert samples == pytest.approx([2.311, 2.190, 2.204, 2.187])


def test_torch_speed_benchmark_malformed():
    with pytest.raises(RunnerOutputError, match="--report_pep=true"):
        parse_torch_speed_benchmark(sample("torch_speed_benchmark_no_pep.txt"))
    with pytest.raises(RunnerOutputError, match="malformed PyTorchObserver line"):
        parse_torch_speed_benchmark(sample("torch_speed_benchmark_malformed.txt"))
    with pytest.raises(RunnerOutputError, match="expected 4 timed inferences but found 3"):
        parse_torch_speed_benchmark("\n".join(sample("torch_speed_benchmark.txt").splitlines()[:-3]))
    with pytest.raises(RunnerOutputError, match="unknown latency unit"):
        parse_torch_speed_benchmark('PyTorchObserver {"type": "NET", "unit": "cycles", "metric": "latency", '
                                    '"value": "3"}')


def test_torch_speed_benchmark_command():
    cmd = get_runner("torch_speed_benchmark:/data/local/tmp/speed_benchmark_torch").command(
        RunSpec("/data/local/tmp/edgeprune/model.ptl", 1000, 10, 4, None, "/w", (1, 1, 28, 28)))
    assert ("/data/local/tmp/speed_benchmark_torch --model=/data/local/tmp/edgeprune/model.ptl "
            "--input_dims=1,1,28,28 --input_type=float --warmup=10 --iter=1000 --report_pep=true") in cmd
    with pytest.raises(UnknownRunnerError, match="needs the input shape"):
        get_runner("torch_speed_benchmark:/x").command(RunSpec("m.ptl", 10, 1, 1, None, "/w"))


# ------------------------------------------------------------------------------------------------- executorch


def test_executorch_sample_drops_warmup():
    samples = ExecutorchRunner("/data/local/tmp/executor_runner").parse(sample("executorch_runner.txt"))
    assert samples == pytest.approx([1.401052, 1.389365, 1.395873])


def test_executorch_summary_fallback(caplog):
    assert parse_executorch(sample("executorch_summary_only.txt")) == pytest.approx([1.5] * 3)
    assert "prints no per-iteration times" in caplog.text


def test_executorch_malformed():
    with pytest.raises(RunnerOutputError, match="no 'Iteration i of n: t ms' lines.*Failed to parse model file"):
        parse_executorch(sample("executorch_malformed.txt"))
    text = sample("executorch_runner.txt").replace("Iteration 3 of 5", "Iteration 4 of 5", 1)
    with pytest.raises(RunnerOutputError, match="iteration 4 out of order"):
        parse_executorch(text)


def test_executorch_command(tmp_path):
    cmd = get_runner("executorch:/data/local/tmp/executor_runner").command(
        RunSpec("model.pte", 100, 5, 2, "c0", "/data/local/tmp/edgeprune"))
    assert ("taskset c0 /data/local/tmp/executor_runner --model_path=model.pte --num_executions=105 "
            "--cpu_threads=2") in cmd
    # A tool given by a path on this computer is pushed into <workdir>/tools/ and run from there.
    tool = tmp_path / "executor_runner"
    tool.write_bytes(b"\x7fELF")
    runner = get_runner(f"executorch:{tool}")
    assert runner.files() == [(tool, "tools/executor_runner")]
    assert "/data/local/tmp/edgeprune/tools/executor_runner --model_path" in runner.command(
        RunSpec("model.pte", 1, 0, 1, None, "/data/local/tmp/edgeprune"))


# --------------------------------------------------------------------------------------------------- registry


def test_registry_knows_these_runners():
    assert {"ort-c", "perf_test", "torch_speed_benchmark", "executorch"} <= set(known_runners())
    assert isinstance(get_runner("ort-c"), OrtCRunner)
    assert isinstance(get_runner("perf_test:/data/local/tmp/onnxruntime_perf_test"), PerfTestRunner)


def test_unknown_runner_refused_with_clear_message():
    with pytest.raises(UnknownRunnerError, match=r"unknown runner 'tflite:/x'.*ort-c.*perf_test"):
        get_runner("tflite:/x")
    with pytest.raises(UnknownRunnerError, match=r"perf_test needs the tool's path"):
        get_runner("perf_test")
    with pytest.raises(UnknownRunnerError, match=r"not a runner bundle folder"):
        get_runner("ort-c:/nonexistent/bundle")
