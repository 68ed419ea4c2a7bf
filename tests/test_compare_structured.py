"""scripts/compare_structured.py on a tiny ResNet-20 and synthetic data: every method runs through the real libraries
(edgeprune's pipeline, Torch-Pruning, ONNX Runtime), the table has a row per method, and Torch-Pruning's model is
pruned to its MACs target."""

from __future__ import annotations

import math

import pytest
import torch

from _scripts import load_script
from edgeprune.data._registry import DataBundle, TensorSplit


@pytest.fixture(scope="module")
def cs():
    return load_script("compare_structured")


def _synthetic(n_train=384, n_eval=128, classes=3, seed=0) -> DataBundle:
    """Three classes told apart by which quadrant of an 8×8 image is bright: learnable in one epoch."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
        for c in range(classes):
            r, q = divmod(c, 2)
            x[y == c, :, 4 * r: 4 * r + 4, 4 * q: 4 * q + 4] += 1.0
        return TensorSplit(x, y)

    return DataBundle("synthetic", split(n_train), split(n_eval), split(n_eval), (1, 8, 8), classes, "")


def test_tiny_comparison(cs, tmp_path, one_thread):
    settings = cs.Settings(arch="resnet20-cifar", width=4, epochs=2, baseline_epochs=2, train_subset=None,
                           batch_size=32, bench_runs=20, bench_warmup=2, bench_block=5, bench_warmup_seconds=0.0,
                           tp_target_ratio=0.6)
    methods = "a,b,c,d" if cs.has_prune_field() else "b,c"
    report = cs.run(settings, tmp_path, _synthetic(), methods=methods, command="pytest")

    keys = [cs.METHODS[m].key for m in methods.split(",")]
    assert list(report["methods"]) == keys
    table = (tmp_path / "comparison.md").read_text()
    for key in keys:
        r = report["methods"][key]
        assert "skipped" not in r, r.get("skipped")
        assert f"| {r['label']} |" in table
        # The budget: SeReNe's loop may stop earlier (accuracy target, a step that prunes nothing), never later.
        assert 1 <= r["training_epochs"] <= settings.epochs
        assert 0.0 <= r["top1_error"] <= 1.0
        assert r["onnx_bytes"] > 0 and 0 < r["onnx_7z_bytes"]
        assert (tmp_path / key / "result.json").exists()
        speed = report["latency"][key]
        assert math.isfinite(speed["speedup_median"]) and speed["speedup_median"] > 0
        lo, hi = speed["speedup_ci95"]
        assert 0 < lo <= hi < math.inf
        assert speed["interval_unit"] == "block" and speed["block_pairs"] == 4
        assert len(r["channels"]) == len(report["dense"]["channels"])

    tp = report["methods"]["tp-groupnorm-sl"]
    assert tp["training_epochs"] == settings.epochs
    dense_macs = report["dense"]["macs"]
    target = tp["tp"]["macs_target"]
    assert tp["macs"] < dense_macs
    assert abs(tp["macs"] / target - 1.0) <= settings.macs_tolerance
    assert tp["tp"]["macs_matched"] and "within ±3 %" in table
    assert target == int(0.6 * dense_macs)
    assert sum(tp["channels"][:-1]) < sum(report["dense"]["channels"][:-1])
    assert tp["channels"][-1] == report["dense"]["channels"][-1]  # the output layer is never pruned
    # TP's regularization dose Σ lr·reg equals its CIFAR recipe's over this run's sparse-learning steps.
    steps = math.ceil(len(_synthetic().train) / settings.batch_size) * settings.tp_split()[0]
    assert tp["config"]["reg"] * settings.tp_lr * steps == pytest.approx(cs.TP_REF_REG * cs.TP_REF_LR_STEPS)

    # A rerun reuses a method's result.json (and the baseline) and measures the latency again.
    again = cs.run(settings, tmp_path, _synthetic(), methods="c", command="pytest")
    assert again["methods"] == {"tp-groupnorm-sl": tp}
    assert again["dense"]["top1_error"] == report["dense"]["top1_error"]
    assert set(again["latency"]) == {"dense", "bench", "tp-groupnorm-sl"}


def test_tp_target_follows_method_a(cs):
    s = cs.Settings()
    assert cs.tp_target(s, 1000, {"macs": 420}) == (420, "the MACs of (a)")
    assert cs.tp_target(s, 1000, None)[0] == 500
    assert cs.tp_target(s, 1000, {"skipped": "no prune field"})[0] == 500
    assert cs.tp_target(cs.Settings(tp_target_ratio=0.3), 1000, {"macs": 420})[0] == 300


def test_tp_target_follows_the_latency_aware_method_when_it_ran(cs):
    s = cs.Settings()
    assert cs.tp_target(s, 1000, {"macs": 420}, {"macs": 380}) == (380, "the MACs of (e)")
    assert cs.tp_target(s, 1000, {"macs": 420}, {"skipped": "no table"}) == (420, "the MACs of (a)")


def test_latency_aware_method_predicts_and_measures(cs, tmp_path, one_thread):
    """(e) ranks by a real (short) profile of the baseline; the report sets each slim model's predicted latency
    next to its measured one."""
    from edgeprune.checkpoint import load_checkpoint
    from edgeprune.latency import profile_model

    settings = cs.Settings(arch="resnet20-cifar", width=4, epochs=1, baseline_epochs=1, train_subset=None,
                           batch_size=32, bench_runs=20, bench_warmup=2, bench_block=5, bench_warmup_seconds=0.0)
    data = _synthetic()
    base = cs.train_baseline(settings, data, tmp_path / "baseline.pt")
    table = profile_model(load_checkpoint(base).model, (1, 8, 8), fractions=(0.5,), runs=10, warmup=1,
                          warmup_seconds=0.0, progress=False)
    settings.latency_table = str(table.save(tmp_path / "table.json"))
    report = cs.run(settings, tmp_path, data, baseline=base, methods="e,c", command="pytest")
    r = report["methods"]["serene-lb-latency"]
    assert "skipped" not in r and r["config"]["neuron_cost"].startswith("latency:")
    assert report["methods"]["tp-groupnorm-sl"]["config"]["target"] == "the MACs of (e)"
    for key in ("serene-lb-latency", "tp-groupnorm-sl"):
        p = report["latency"]["predicted"][key]
        assert p["measured_ms"] == report["latency"][key]["median_ms"]
        assert p["error"] == pytest.approx(p["predicted_ms"] / p["measured_ms"] - 1)
        widths = dict(zip(report["methods"][key]["layers"], report["methods"][key]["channels"]))
        assert p["predicted_ms"] == pytest.approx(table.predict({g.root: widths[g.root] for g in table.groups}))
    text = (tmp_path / "comparison.md").read_text()
    assert "Latency predicted from the table" in text
    # Every other slim model against (e), from the same blocks: (e)'s median ÷ the model's.
    vs = report["latency"]["versus"]
    assert vs["ref"] == "serene-lb-latency" and set(vs) == {"ref", "tp-groupnorm-sl"}
    v = vs["tp-groupnorm-sl"]
    lat = report["latency"]
    e_ms, tp_ms = lat["serene-lb-latency"]["median_ms"], lat["tp-groupnorm-sl"]["median_ms"]
    assert v["ratio_median"] == pytest.approx(e_ms / tp_ms)
    lo, hi = v["ci95"]
    assert 0 < lo <= hi and v["interval_unit"] == "block" and v["block_pairs"] == 4
    assert f"| {v['ratio_median']:.3f} [{lo:.3f}, {hi:.3f}] |" in text and "Latency against (e)" in text


def test_include_benches_another_runs_model_in_the_same_alternating_run(cs, tmp_path, one_thread):
    """--include: Torch-Pruning at one MACs target from an earlier run, next to this run's TP at another target, in
    one bench (same blocks, each against the dense model of its round) and in one table."""
    import json

    data = _synthetic()
    settings = cs.Settings(arch="resnet20-cifar", width=4, epochs=2, baseline_epochs=1, train_subset=None,
                           batch_size=32, bench_runs=20, bench_warmup=2, bench_block=5, bench_warmup_seconds=0.0,
                           tp_target_ratio=0.6)
    base = cs.train_baseline(settings, data, tmp_path / "baseline.pt")
    first = cs.run(settings, tmp_path / "r60", data, baseline=base, methods="c", command="pytest")
    settings.tp_target_ratio = 0.8
    folder = tmp_path / "r60" / "tp-groupnorm-sl"
    report = cs.run(settings, tmp_path / "r80", data, baseline=base, methods="c", command="pytest",
                    include=[str(folder)])

    key = "tp-groupnorm-sl@r60"
    assert list(report["methods"]) == ["tp-groupnorm-sl", key]
    mine, other = report["methods"]["tp-groupnorm-sl"], report["methods"][key]
    assert other["top1_error"] == first["methods"]["tp-groupnorm-sl"]["top1_error"]
    assert other["macs"] < mine["macs"]  # 0.6 vs 0.8 of the dense MACs
    assert other["included_from"] == str(folder)
    bench = report["latency"]["bench"]
    assert [m["label"] for m in bench["models"]] == ["dense", "tp-groupnorm-sl", key]
    for k in ("tp-groupnorm-sl", key):
        assert report["latency"][k]["interval_unit"] == "block" and report["latency"][k]["block_pairs"] == 4
    table = (tmp_path / "r80" / "comparison.md").read_text()
    assert f"| {other['label']} | {other['epochs_split']} | {other['top1_error']:.2%} |" in table
    assert "| layer | dense | (c) | (c) r60 |" in table
    assert f"from {folder}: Torch-Pruning" in table and "0.6 × dense MACs" in table
    assert key not in report["budget"]["seconds"]  # trained elsewhere: not this run's budget

    # Bad input stops before any training, with what is wrong and what to do.
    with pytest.raises(SystemExit, match="no result.json there"):
        cs.run(settings, tmp_path / "bad", data, baseline=base, methods="c", include=[str(tmp_path / "r60")])
    assert not (tmp_path / "bad" / "tp-groupnorm-sl").exists()
    comparison = tmp_path / "r60" / "comparison.json"
    other_base = json.loads(comparison.read_text())
    other_base["dense"]["top1_error"] += 0.01
    comparison.write_text(json.dumps(other_base))
    with pytest.raises(SystemExit, match="pruned from another baseline"):
        cs.run(settings, tmp_path / "bad", data, baseline=base, methods="", include=[str(folder)])
    with pytest.raises(SystemExit, match="given twice"):
        comparison.unlink()
        cs.run(settings, tmp_path / "bad", data, baseline=base, methods="", include=[str(folder), str(folder)])


def test_include_is_a_repeatable_option(cs):
    _, args = cs.parse_args(["--include", "runs/x/tp-groupnorm-sl", "--include", "runs/y/tp-groupnorm-sl"])
    assert args.include == ["runs/x/tp-groupnorm-sl", "runs/y/tp-groupnorm-sl"]
    assert cs.parse_args([])[1].include == []
