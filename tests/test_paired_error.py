"""scripts/paired_error.py: ONNX Runtime predictions checked against PyTorch's on the same images, the paired error
difference and McNemar's exact test against values worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from _scripts import load_script


@pytest.fixture(scope="module")
def pe():
    return load_script("paired_error")


def _export(model: nn.Module, path: Path) -> Path:
    from edgeprune.export import export_all

    e = export_all(model.eval(), path.parent, path.stem, (1, 6, 6), ("onnx",), real_batch=torch.randn(4, 1, 6, 6))
    return Path(e["artifacts"]["onnx"]["path"])


def test_mcnemar_exact_by_hand(pe):
    assert pe.mcnemar_exact(0, 0) == 1.0
    assert pe.mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # P(X ≤ 0) = 1/64 for Bin(6, 1/2), two-sided
    assert pe.mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert pe.mcnemar_exact(5, 5) == 1.0


def test_paired_difference_and_interval(pe):
    ref = np.array([True] * 80 + [False] * 20)  # 20 % error
    other = ref.copy()
    other[:6] = False  # the other model misses 6 images the reference gets right ...
    other[80:81] = True  # ... and gets one the reference misses: 25 % error
    r = pe.paired(ref, other, seed=0, resamples=500)
    assert r["ref_error"] == pytest.approx(0.20) and r["error"] == pytest.approx(0.25)
    assert r["diff"] == pytest.approx(-0.05)  # reference − other
    assert (r["ref_only_right"], r["other_only_right"]) == (6, 1)
    assert r["mcnemar_p"] == pytest.approx(pe.mcnemar_exact(6, 1))
    lo, hi = r["ci95"]
    assert lo < -0.05 < hi and hi - lo < 0.15  # only the 7 discordant images move the difference
    with pytest.raises(ValueError, match="same images"):
        pe.paired(ref, other[:50])


def test_compare_runs_real_onnx_models_like_pytorch(pe, tmp_path, one_thread):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 6, 6)
    a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    b = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    with torch.no_grad():
        pa, pb = a(x).argmax(1).numpy(), b(x).argmax(1).numpy()
    y = pa.copy()
    y[:10] = (y[:10] + 1) % 3  # the reference is wrong on 10 images
    pa_path, pb_path = _export(a, tmp_path / "a" / "model.onnx"), _export(b, tmp_path / "b" / "model.onnx")
    report = pe.compare(str(pa_path), [str(pb_path)], x.numpy(), y)
    assert np.array_equal(pe.predict(pa_path, x.numpy()), pa)  # ONNX Runtime agrees with PyTorch
    assert report["ref_error"] == pytest.approx(10 / 64)
    r = report["models"][str(pb_path)]
    assert r["error"] == pytest.approx(float(np.mean(pb != y)))
    assert r["ref_only_right"] == int(np.sum((pa == y) & (pb != y)))
    assert r["other_only_right"] == int(np.sum((pa != y) & (pb == y)))
    assert r["diff"] == pytest.approx(report["ref_error"] - r["error"])
    table = pe.markdown(report)
    assert f"| {pb_path} | {r['error']:.2%} |" in table and math.isfinite(r["mcnemar_p"])


def test_bad_input_is_one_clear_line(pe, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        pe.main(["--ref", str(tmp_path / "missing.onnx"), str(tmp_path / "other.onnx")])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(SystemExit, match="cannot be loaded by ONNX Runtime"):
        pe.predict(junk, np.zeros((1, 1, 6, 6), np.float32))
