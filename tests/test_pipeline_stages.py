"""`edgeprune compress` after the loop: surgery → export → report, on a tiny model, checked against the masked model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeprune.checkpoint import load_checkpoint
from edgeprune.errors import ConfigError
from edgeprune.pipeline import StageOptions, run_compress
from test_compress import _config, setup  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    data, base = setup
    run = tmp_path_factory.mktemp("run") / "r"
    cfg = _config(lam=0.2, twt=1.0, max_epochs=8, prune="neurons")  # the default: whole neurons, no folding
    summary = run_compress(base, run, cfg, data=data)
    return data, run, summary


def test_slim_model_is_smaller_and_equal_to_masked(full_run):
    data, run, summary = full_run
    masked = load_checkpoint(run / "masked.pt")
    raw = torch.load(run / "model.pt", weights_only=True)  # slim reloads from its spec, no pickled modules
    assert "surgery" in raw["arch"]
    slim = load_checkpoint(run / "model.pt")
    x = data.test.x[:32]
    ref = _outputs(masked.model, x)
    assert torch.allclose(_outputs(slim.model, x), ref, atol=1e-5 * max(1.0, float(ref.abs().max())))
    n_slim = sum(p.numel() for p in slim.model.parameters())
    assert summary["slim"]["params_total"] == n_slim
    alive = summary["pruned"]["neurons"]
    assert summary["slim"]["neurons"][:-1] == alive[:-1]  # hidden layers cut to exactly their alive neurons
    assert n_slim < summary["baseline"]["params_total"]
    assert slim.meta["surgery_report"]["verification"]["max_abs_diff"] <= 1e-5


def test_exports_match_their_pytorch_models(full_run):
    import onnxruntime as ort

    data, run, summary = full_run
    x = data.test.x[:1].numpy()
    for stem, ckpt in (("baseline", "baseline.pt"), ("model", "model.pt")):
        for ext in ("onnx", "ort"):
            sess = ort.InferenceSession(str(run / f"{stem}.{ext}"), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            want = _outputs(load_checkpoint(run / ckpt).model, torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert (run / f"{stem}.ptl").stat().st_size > 0 and (run / f"{stem}.7z").stat().st_size > 0
    assert summary["export"]["model"]["onnx_bytes"] == (run / "model.onnx").stat().st_size


def test_report_written_with_the_compress_figures(full_run):
    _, run, summary = full_run
    report = json.loads((run / "report.json").read_text())
    assert report["compression_ratio"] == pytest.approx(summary["compression_ratio"])
    assert report["pruned"]["neurons"] == summary["pruned"]["neurons"]
    assert report["baseline"]["onnx_bytes"] == (run / "baseline.onnx").stat().st_size
    assert "[" in (run / "report.md").read_text() and list((run / "plots").glob("*.png"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"] == ["load", "baseline", "compress", "surgery", "export", "quantize", "latency", "report"]
    assert manifest["pipeline"]["export_formats"] == ["onnx", "ptl", "ort"]


def test_no_surgery_and_no_export(setup, tmp_path):
    data, base = setup
    run = tmp_path / "r"
    opts = StageOptions(surgery=False, export_formats=(), report=False)
    summary = run_compress(base, run, _config(max_epochs=2), data=data, options=opts)
    assert (run / "masked.pt").exists() and not (run / "model.pt").exists()
    assert not list(run.glob("*.onnx")) and not (run / "report.json").exists()
    assert "slim" not in summary
    # --resume repeats the recorded stage options
    run_compress(base, run, _config(max_epochs=2), data=data, resume=True)
    assert not (run / "model.pt").exists() and not list(run.glob("*.onnx"))


def test_stage_options_validation():
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        StageOptions(export_formats=("onnx", "tflite"))
    with pytest.raises(ConfigError, match="--round-channels must be at least 1"):
        StageOptions(round_channels=0)
    with pytest.raises(ConfigError, match="drop --no-surgery"):
        StageOptions(surgery=False, round_channels=8)
