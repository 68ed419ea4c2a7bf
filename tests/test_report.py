"""The paper-style report of a run folder: report.json numbers checked against independent counts, report.md, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgeprune.checkpoint import save_checkpoint
from edgeprune.errors import CheckpointError
from edgeprune.report import render_markdown_table, write_report
from edgeprune.report.plots import survivors_image

PNG = b"\x89PNG\r\n\x1a\n"


def _lenet5_run(run: Path) -> tuple[nn.Module, nn.Module]:
    """A run folder like `edgeprune compress` writes: SeReNe Table IV's LeNet-5 topology [20]-[49]-[449]-[10]."""
    from edgeprune.models import create_model

    base = create_model("lenet5")
    save_checkpoint(run / "baseline.pt", base,
                    meta={"top1_error": 0.081, "dataset": "fashion-mnist", "input_shape": [1, 28, 28]})
    masked = create_model("lenet5")
    masked.load_state_dict(base.state_dict())
    with torch.no_grad():
        masked[3].weight[49:] = 0          # conv2: 1 of 50 filters pruned
        masked[3].bias[49:] = 0
        masked[7].weight[:, 49 * 16:] = 0  # FC1 inputs fed by that filter
        masked[7].weight[:, 200:400] = 0   # and unstructured zeros
        masked[7].weight[449:] = 0         # FC1: 51 of 500 neurons pruned
        masked[7].bias[449:] = 0
        masked[9].weight[:, 449:] = 0
    save_checkpoint(run / "masked.pt", masked,
                    meta={"top1_error": 0.0847, "dataset": "fashion-mnist", "input_shape": [1, 28, 28]})
    (run / "manifest.json").write_text(json.dumps({"method": "lb", "dataset": "fashion-mnist", "arch": "lenet5",
                                                   "config": {"method": "lb", "twt": 1.5}}))
    return base, masked


def _tiny_run(run: Path, name: str = "tiny-cnn") -> tuple[nn.Module, nn.Module]:
    from edgeprune.models import create_model, input_shape_of

    base = create_model(name)
    shape = list(input_shape_of(name))
    save_checkpoint(run / "baseline.pt", base, meta={"top1_error": 0.2, "dataset": "synthetic", "input_shape": shape})
    masked = create_model(name)
    masked.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in masked.parameters():
            p.mul_((torch.rand_like(p) > 0.6).float())
    save_checkpoint(run / "masked.pt", masked, meta={"top1_error": 0.25, "input_shape": shape})
    # Like the compress pipeline's manifest: the method lives in the config.
    (run / "manifest.json").write_text(json.dumps({"format": "edgeprune-run", "dataset": "synthetic",
                                                   "config": {"method": "serene-ub", "twt": 0.3}}))
    return base, masked


def _alive_rows(w: torch.Tensor, b: torch.Tensor) -> int:
    return int((w.reshape(w.shape[0], -1).ne(0).any(1) | b.ne(0)).sum())


def test_report_of_a_lenet5_run_matches_independent_counts(tmp_path):
    base, masked = _lenet5_run(tmp_path)
    report = write_report(tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["compression_ratio"] == pytest.approx(report["compression_ratio"])
    for key in ("dataset", "arch", "method", "baseline", "pruned", "compression_ratio"):
        assert key in on_disk
    assert (report["dataset"], report["arch"], report["method"]) == ("fashion-mnist", "lenet5", "lb")
    total = sum(p.numel() for p in base.parameters())
    nonzero = sum(int(p.ne(0).sum()) for p in masked.parameters())
    assert report["baseline"]["params_total"] == total
    assert report["pruned"]["params_nonzero"] == nonzero
    assert report["compression_ratio"] == pytest.approx(total / nonzero)
    assert report["baseline"]["neurons"] == [20, 50, 500, 10]
    expected = [_alive_rows(masked[i].weight, masked[i].bias) for i in (0, 3, 7, 9)]
    assert report["pruned"]["neurons"] == expected == [20, 49, 449, 10]
    fc1 = masked[7]
    assert report["remaining_params_pct"]["FC1"] == pytest.approx(
        100 * (int(fc1.weight.ne(0).sum()) + int(fc1.bias.ne(0).sum())) / (fc1.weight.numel() + fc1.bias.numel()))
    assert report["remaining_params_pct"]["Conv1"] == pytest.approx(100.0)
    for side in ("baseline", "pruned"):
        m = report[side]
        for key in ("params_total", "params_nonzero", "neurons", "macs", "top1_error", "onnx_bytes", "onnx_7z_bytes"):
            assert m[key] is not None
    # Zeros barely change the .onnx but LZMA removes them (SeReNe Table IV: 1494 → 46 kB).
    assert report["pruned"]["onnx_7z_bytes"] < 0.8 * report["baseline"]["onnx_7z_bytes"]
    assert report["pruned"]["top1_error"] == pytest.approx(0.0847)
    md = (tmp_path / "report.md").read_text()
    assert "[20]-[49]-[449]-[10]" in md and "[20]-[50]-[500]-[10]" in md
    assert ".onnx → .7z [kB]" in md and "SeReNe (LB)" in md and "8.47" in md
    assert render_markdown_table(report) in md
    for name in ("neurons", "fc1_mask", "remaining_params"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 2000
    assert sorted(report["plots"]) == sorted(f"plots/{n}.png" for n in ("neurons", "fc1_mask", "remaining_params"))


def test_markdown_table_has_the_papers_columns():
    report = {
        "method": "lb", "compression_ratio": 17.04,
        "layers": [{"label": lbl, "remaining_pct": pct} for lbl, pct in
                   (("Conv1", 85.71), ("Conv2", 32.14), ("FC1", 3.63), ("FC2", 52.03))],
        "baseline": {"params_total": 431080, "neurons": [20, 50, 500, 10], "onnx_bytes": 1686000,
                     "onnx_7z_bytes": 1510000, "top1_error": 0.081},
        "pruned": {"params_nonzero": 25298, "neurons": [20, 49, 449, 10], "onnx_bytes": 1494000,
                   "onnx_7z_bytes": 46000, "top1_error": 0.0847},
    }
    table = render_markdown_table(report).splitlines()
    assert table[0].split("|")[1:-1] == [" Approach ", " Conv1 (%) ", " Conv2 (%) ", " FC1 (%) ", " FC2 (%) ",
                                          " Compr. ratio ", " Remaining neurons ", " .onnx → .7z [kB] ",
                                          " Top-1 error (%) "]
    assert [c.strip() for c in table[3].split("|")[1:-1]] == [
        "SeReNe (LB)", "85.71", "32.14", "3.63", "52.03", "17.04x", "[20]-[49]-[449]-[10]", "1,494 → 46", "8.47"]
    assert [c.strip() for c in table[2].split("|")[1:-1]][-3:] == ["[20]-[50]-[500]-[10]", "1,686 → 1,510", "8.10"]


def test_survivors_image_marks_exactly_the_surviving_weights():
    w = torch.zeros(6, 10)
    w[1, 3] = 0.5
    w[4, :] = -1.0
    img = survivors_image(w)
    assert torch.equal(img, w.ne(0))
    big = torch.zeros(4000, 10)
    big[3999, 9] = 1.0
    small = survivors_image(big, max_pixels=1000)
    assert small.shape == (1000, 10) and int(small.sum()) == 1 and bool(small[-1, -1])


def test_report_uses_exported_artifacts_and_validates_them(tmp_path):
    from edgeprune.export import export_all

    base, masked = _tiny_run(tmp_path)
    export_all(base, tmp_path, "baseline", (1, 8, 8), formats=("onnx",))
    export_all(masked, tmp_path, "model", (1, 8, 8))
    report = write_report(tmp_path, plots=False)
    assert (report["method"], report["arch"], report["dataset"]) == ("serene-ub", "tiny-cnn", "synthetic")
    pruned = report["pruned"]
    for fmt in ("onnx", "ptl", "ort"):
        assert pruned[f"{fmt}_bytes"] == (tmp_path / f"model.{fmt}").stat().st_size
        assert 0 <= pruned["max_abs_diff"][fmt] <= 1e-4
    assert pruned["onnx_7z_bytes"] == (tmp_path / "model.7z").stat().st_size
    assert report["baseline"]["onnx_bytes"] == (tmp_path / "baseline.onnx").stat().st_size
    assert "ptl_bytes" not in report["baseline"]
    assert not (tmp_path / "plots").exists() and report["plots"] == []
    # A damaged artifact is reported, not silently measured.
    (tmp_path / "model.ptl").write_bytes(b"not a lite-interpreter file")
    report = write_report(tmp_path, plots=False)
    assert any(m.startswith("ptl on load") and "cannot be loaded" in m for m in report["pruned"]["mismatches"])
    assert "Artifact mismatches" in (tmp_path / "report.md").read_text()


def test_report_with_a_slim_model_counts_the_slim_network(tmp_path):
    surgery_mod = pytest.importorskip("edgeprune.surgery")
    from edgeprune.surgery.synthetic import kill_random_channels

    base, masked = _tiny_run(tmp_path, "tiny-resnet")
    from edgeprune.models import create_model

    dead = create_model("tiny-resnet").eval()
    dead.load_state_dict(base.state_dict())
    kill_random_channels(dead, (1, 8, 8), fraction=0.5, seed=2)
    save_checkpoint(tmp_path / "masked.pt", dead, meta={"top1_error": 0.3, "input_shape": [1, 8, 8]})
    slim = surgery_mod.surgery(dead, (1, 8, 8)).model
    save_checkpoint(tmp_path / "model.pt", slim, meta={"top1_error": 0.3, "input_shape": [1, 8, 8]},
                    arch=slim.edgeprune_arch)
    report = write_report(tmp_path, plots=False)
    pruned = report["pruned"]
    assert pruned["slim"] is True
    assert pruned["params_total"] == sum(p.numel() for p in slim.parameters()) < report["baseline"]["params_total"]
    assert pruned["macs"] < report["baseline"]["macs"]
    assert pruned["masked_onnx_bytes"] > pruned["onnx_bytes"]


def test_bench_sections_and_results_survive_regeneration(tmp_path):
    _tiny_run(tmp_path)
    block = "<!-- bench:adb -->\n## Latency on phone\nmedian 1.0 ms\n<!-- /bench:adb -->"
    (tmp_path / "report.md").write_text("old table\n\n" + block + "\n")
    (tmp_path / "bench" / "cpu").mkdir(parents=True)
    (tmp_path / "bench" / "cpu" / "bench.json").write_text(json.dumps({"models": [
        {"label": "model.onnx", "role": "slim", "median_ms": 1.5, "mean_ms": 1.6, "speedup": 2.0,
         "samples_ms": [1.5] * 5}]}))
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_accuracy": 0.5}\n{"epoch": 2, "val_accuracy": 0.6}\n')
    report = write_report(tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "old table" not in md and block in md and md.index(block) > md.index("Compr. ratio")
    assert report["bench"][0]["device"] == "cpu"
    assert report["bench"][0]["models"][0]["speedup"] == 2.0 and "samples_ms" not in report["bench"][0]["models"][0]
    assert report["metrics"] == {"rows": 2, "last": {"epoch": 2, "val_accuracy": 0.6}}
    write_report(tmp_path, plots=False)
    assert (tmp_path / "report.md").read_text().count("<!-- bench:adb -->") == 1


def test_incomplete_or_corrupt_runs_raise_checkpoint_errors(tmp_path):
    _tiny_run(tmp_path)
    (tmp_path / "masked.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        write_report(tmp_path)
    (tmp_path / "masked.pt").unlink()
    with pytest.raises(CheckpointError, match="masked.pt"):
        write_report(tmp_path)
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()


def test_cli_report(tmp_path, capsys):
    from edgeprune.cli import main

    _tiny_run(tmp_path)
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| Approach |" in out and "SeReNe (UB)" in out
    assert (tmp_path / "report.json").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_deep_networks_get_one_total_column_and_the_per_layer_table():
    from edgeprune.report import render_layers_table

    layers = [{"label": f"Conv{i + 1}", "name": f"layer{i}", "kind": "Conv2d", "neurons_before": 16,
               "neurons_after": 8, "params": 1000, "remaining": 250, "remaining_pct": 25.0} for i in range(33)]
    report = {"method": "serene-lb", "compression_ratio": 4.0, "layers": layers,
              "baseline": {"params_total": 33000, "neurons": [16] * 33, "onnx_bytes": 140000, "onnx_7z_bytes": 120000,
                           "top1_error": 0.07},
              "pruned": {"params_nonzero": 8250, "neurons": [8] * 33, "onnx_bytes": 140000, "onnx_7z_bytes": 40000,
                         "top1_error": 0.075}}
    table = render_markdown_table(report).splitlines()
    assert "Remaining params (%)" in table[0] and "Conv1 (%)" not in table[0]
    assert [c.strip() for c in table[3].split("|")[1:-1]][:3] == ["SeReNe (LB)", "25.00", "4.00x"]
    per_layer = render_layers_table(report).splitlines()
    assert len(per_layer) == 2 + 33 and "| Conv33 | `layer32` | Conv2d | 16 → 8 | 1,000 | 250 | 25.00 |" in per_layer
