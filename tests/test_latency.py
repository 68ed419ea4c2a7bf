"""Latency tables (`edgeprune profile`), latency-aware neuron ranking, the latency stop rule, predicted vs measured."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
import torch

from edgeprune.cli import main
from edgeprune.errors import ConfigError
from edgeprune.latency import (RATIO_FLOOR, SCHEMA, GroupEntry, LatencyTable, neuron_latency_costs, profile_model,
                               profile_widths, widths_of_module)
from edgeprune.masks import full_masks
from edgeprune.models import create_model
from edgeprune.pipeline import StageOptions, run_compress
from edgeprune.regularize.config import CompressConfig
from edgeprune.threshold.neurons import find_neuron_threshold, group_alive, neuron_groups
from test_compress import trained_baseline

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def bn_setup(tmp_path_factory):
    return trained_baseline(tmp_path_factory, "tiny-resnet", sizes=(480, 150, 150))


def _hand_table(groups, per_neuron: dict[str, float], round_channels=None, base=1.0) -> LatencyTable:
    """A table whose Δ is exactly linear: ``per_neuron[root]`` ms per neuron removed, measured at size and 1."""
    entries = []
    for g in groups:
        k = per_neuron[g.root]
        widths = [g.size, 1] if g.size > 1 else [g.size]
        deltas = [0.0, -k * (g.size - 1)][:len(widths)]
        entries.append(GroupEntry(g.root, g.size, [g.root], [], widths, [base + d for d in deltas], deltas))
    return LatencyTable(baseline_ms=base, groups=entries, device={"kind": "hand-made"},
                        protocol={"device": "hand-made", "runs": 0}, model={}, round_channels=round_channels)


# --- the table ------------------------------------------------------------------------------------------------------


def test_profile_table_structure_units_and_widths(bn_setup, tmp_path):
    """A real (short) profile of tiny-resnet on this CPU: one entry per neuron group with the group's size, widths
    rounded as surgery rounds them, latencies in ms from the bench protocol, the device and protocol records; the
    JSON round-trips and the narrowed variants really have the measured widths."""
    _, base = bn_setup
    from edgeprune.checkpoint import load_checkpoint

    model = load_checkpoint(base).model.eval()
    groups = neuron_groups(model, SHAPE)
    table = profile_model(model, SHAPE, fractions=(0.5,), round_channels=2, runs=20, warmup=2, warmup_seconds=0.0,
                          progress=False, checkpoint=base)
    assert table.schema == SCHEMA and table.units["latency"].startswith("ms")
    assert [(g.root, g.size) for g in table.groups] == [(g.root, g.size) for g in groups]
    for g in table.groups:
        assert g.widths == profile_widths(g.size, (0.5,), 2) and g.widths[0] == g.size
        assert all(w % 2 == 0 for w in g.widths[1:])
        assert g.delta_ms[0] == 0.0 and all(v > 0 for v in g.latency_ms)
        assert g.delta_ms == pytest.approx([v - table.baseline_ms for v in g.latency_ms])
        assert g.consumers  # the layers reading the group, which narrowing also shrinks
    assert table.baseline_ms > 0 and table.device["cpu_model"] and table.device["kind"] == "cpu"
    assert table.protocol["runs"] == 20 and table.protocol["device"] == "cpu" and table.protocol["threads"] == 1
    assert table.model["sha256"] and table.model["input_shape"] == list(SHAPE) and table.seconds > 0
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again == table and json.loads(path.read_text())["schema"] == SCHEMA
    from edgeprune.latency import narrowed

    g = groups[0]
    slim = narrowed(model, g, 2, SHAPE, 2)
    assert widths_of_module(slim, SHAPE)[g.root] == 2
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():  # the variant is the real model with that group cut, not a new network
        assert not torch.allclose(slim(x), model(x))


def test_profile_widths_round_like_surgery():
    assert profile_widths(16, (0.75, 0.5, 0.25), 8) == [16, 8]
    assert profile_widths(64, (0.75, 0.5, 0.25), 8) == [64, 48, 32, 16]
    assert profile_widths(50, (0.75, 0.5, 0.25), None) == [50, 38, 25, 13]
    assert profile_widths(3, (0.1,), None) == [3, 1]


def test_prediction_and_marginal_latency_follow_the_documented_rule():
    e = GroupEntry("a", 8, ["a"], [], [8, 6, 4], [1.0, 0.8, 0.7], [0.0, -0.2, -0.3])
    f = GroupEntry("b", 4, ["b"], [], [4, 2], [1.0, 0.98], [0.0, -0.02])
    t = LatencyTable(1.0, [e, f], {"kind": "cpu"}, {"device": "cpu"}, {})
    assert e.delta(7) == pytest.approx(-0.1) and e.delta(5) == pytest.approx(-0.25)
    assert e.delta(2) == pytest.approx(-0.4)  # below the narrowest: its segment extended
    # Several groups: the product of their latency ratios (one group alone: exactly its measured latency).
    assert t.predict({"a": 6}) == pytest.approx(0.8) and t.predict({"b": 2}) == pytest.approx(0.98)
    assert t.predict({"a": 6, "b": 2}) == pytest.approx(0.8 * 0.98)
    assert t.predict({}) == 1.0
    assert t.marginal("a", 8) == pytest.approx(0.1) and t.marginal("a", 5) == pytest.approx(0.05)
    # A segment that measured a slow-down gets the floor: 1 % of the largest mean slope (a: 0.3 / 4).
    g = GroupEntry("c", 4, ["c"], [], [4, 2], [1.0, 1.01], [0.0, 0.01])
    t2 = LatencyTable(1.0, [e, g], {}, {}, {})
    assert t2.marginal("c", 4) == pytest.approx(0.01 * 0.3 / 4)
    # Rounded tables look widths up as surgery will ship them (7 alive → 8 wide when rounding to 4).
    t3 = LatencyTable(1.0, [e], {}, {}, {}, round_channels=4)
    assert t3.predict({"a": 7}) == 1.0 and t3.predict({"a": 4}) == pytest.approx(0.7)


def test_prediction_stays_positive_when_every_group_is_narrowed_together():
    """The additive rule (dense + Σ Δ) went below zero when several groups were cut together (LeNet-5's measured
    table at widths 5/13/125 predicted −0.03 ms): the product of ratios stays positive, saves less than the sum of
    the single-group savings, and each factor is floored."""
    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    # Each group alone at width 1 saves 60 % of the dense latency: additively 3 groups would predict −0.8 ms.
    table = _hand_table(groups, {g.root: 0.6 / (g.size - 1) for g in groups}, base=1.0)
    narrow = {g.root: 1 for g in groups}
    additive = 1.0 + sum(table.entry(g.root).delta(1) for g in groups)
    assert additive < 0 < table.predict(narrow)
    assert table.predict(narrow) == pytest.approx(0.4 ** len(groups))
    for g in groups:  # one group alone: its measured latency, as before
        assert table.predict({g.root: 1}) == pytest.approx(0.4)
    # Extrapolated far below the narrowest measured width a group's factor is floored, never negative.
    e = GroupEntry("a", 8, ["a"], [], [8, 4], [1.0, 0.2], [0.0, -0.8])
    t = LatencyTable(1.0, [e], {}, {}, {})
    assert e.delta(1) < -1.0 and t.predict({"a": 1}) == pytest.approx(RATIO_FLOOR)
    assert t.min_predicted_ms() == pytest.approx(0.2)
    # Marginal latencies (the ranking cost) stay positive even where a segment measured a slow-down.
    g = GroupEntry("c", 4, ["c"], [], [4, 2], [1.0, 1.5], [0.0, 0.5])
    t2 = LatencyTable(1.0, [e, g], {}, {}, {})
    assert all(t2.marginal(r, w) > 0 for r, w in (("a", 8), ("a", 3), ("c", 4), ("c", 1)))


def test_a_table_for_another_input_shape_or_rounding_is_refused():
    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    table = _hand_table(groups, {g.root: 1e-3 for g in groups})
    table.model = {"arch": "lenet5", "input_shape": [1, 32, 32], "checkpoint": "other.pt", "sha256": "x"}
    with pytest.raises(ConfigError, match=r"input shape 1,32,32.*1,28,28.*edgeprune profile"):
        table.check_groups(groups, input_shape=(1, 28, 28))
    table.model["input_shape"] = [1, 28, 28]
    table.check_groups(groups, input_shape=(1, 28, 28))  # another checkpoint of the same architecture is fine
    table.round_channels = 8
    with pytest.raises(ConfigError, match="add --round-channels 8"):
        table.check_groups(groups, round_channels=None)
    table.check_groups(groups, round_channels=8)
    table.round_channels = None
    with pytest.raises(ConfigError, match="drop --round-channels"):
        table.check_groups(groups, round_channels=4)
    table.check_groups(groups, round_channels=None)


def test_malformed_or_foreign_tables_are_clear_errors(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": "nope"}))
    with pytest.raises(ConfigError, match="not an edgeprune latency table"):
        LatencyTable.load(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")
    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    table = _hand_table(groups, {g.root: 1e-3 for g in groups})
    table.groups[0].size += 1
    with pytest.raises(ConfigError, match="profiled for other layers"):
        table.check_groups(groups)


# --- ranking ----------------------------------------------------------------------------------------------------------


def test_latency_cost_changes_the_pruning_order_as_documented():
    """Equal scores everywhere: plain ranking prunes in (group, neuron) order; divided by the hand-made marginal
    latencies, the neurons of the group with the dearest neurons go first, then the next dearest."""
    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    roots = [g.root for g in groups]
    dear, mid, cheap = roots[-1], roots[0], roots[1]
    table = _hand_table(groups, {dear: 1e-2, mid: 1e-3, cheap: 1e-4})
    masks = full_masks(m)
    costs = neuron_latency_costs(table, groups, masks)
    assert [float(c[0]) for c in costs] == pytest.approx([table.marginal(r, g.size) for r, g in zip(roots, groups)])
    flat = [torch.ones(g.size, dtype=torch.float64) for g in groups]

    def dead_count(limit):
        def evaluate(mm):
            zeros = {n: p.detach().ne(0) for n, p in mm.named_parameters()}
            return float(sum(int((~group_alive(g, zeros)).sum()) for g in groups))
        return evaluate, (lambda v: v <= limit)

    ev, ok = dead_count(3)
    plain = find_neuron_threshold(m, masks, groups, ev, ok, scores=flat)
    assert plain.pruned == 3 and list(plain.per_group) == [roots[0]]  # ties: first group first
    n_dear = next(g.size for g in groups if g.root == dear) - 1
    ev, ok = dead_count(n_dear + 2)
    aware = find_neuron_threshold(m, masks, groups, ev, ok, scores=flat, costs=costs)
    assert aware.per_group == {dear: n_dear, mid: 2}


def test_stop_rule_prunes_just_enough_to_reach_the_target():
    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    table = _hand_table(groups, {g.root: 1e-3 for g in groups}, base=1.0)
    target = 1.0 - 0.0105  # 10.5 neurons' worth: the 11th neuron reaches it
    flat = [torch.ones(g.size, dtype=torch.float64) for g in groups]
    res = find_neuron_threshold(m, full_masks(m), groups, lambda mm: 0.0, lambda v: True, scores=flat,
                                enough=lambda w: table.predict(w) <= target)
    assert res.pruned == 11
    # Already at the target: nothing is pruned.
    none = find_neuron_threshold(m, full_masks(m), groups, lambda mm: 0.0, lambda v: True, scores=flat,
                                 enough=lambda w: True)
    assert none.pruned == 0


# --- the loop and the run ------------------------------------------------------------------------------------------


def _config(**kw) -> CompressConfig:
    base = dict(method="serene-lb", lam=0.02, twt=0.5, pwe=1, lr=0.01, momentum=0.9, max_epochs=3, batch_size=40,
                target_drop=0.05, device="cpu", prune="neurons")
    base.update(kw)
    return CompressConfig(**base)


def test_compress_stops_at_the_latency_target_and_reports_predicted_vs_measured(bn_setup, tmp_path):
    """A hand-made table (every neuron 1 µs) with a target 3 neurons away: the run stops once the prediction
    reaches it (never pruning beyond), keeps the accuracy target, and compress.json holds the predicted latency
    of the shipped slim model next to its latency measured here against the baseline."""
    data, base = bn_setup
    from edgeprune.checkpoint import load_checkpoint

    model = load_checkpoint(base).model
    groups = neuron_groups(model, SHAPE)
    table = _hand_table(groups, {g.root: 1e-3 for g in groups}, base=0.5)
    table.protocol = {"device": "cpu", "runs": 50, "warmup": 2, "warmup_seconds": 0.0, "threads": 1}
    path = table.save(tmp_path / "table.json")
    easy = dict(twt=50.0, target_drop=0.4)  # a loss bound and accuracy target that admit pruning many neurons
    cfg = _config(neuron_cost=f"latency:{path}", target_latency=0.5 - 0.0025, **easy)
    summary = run_compress(base, tmp_path / "run", cfg, data=data,
                           options=StageOptions(export_formats=("onnx",), report=False))
    lat = summary["latency"]
    slim_widths = widths_of_module(load_checkpoint(tmp_path / "run" / "model.pt").model, SHAPE)
    removed = sum(g.size for g in groups) - sum(slim_widths.values())
    assert removed == 3 and summary["stop_reason"] == "latency_target"
    assert lat["predicted_ms"] == pytest.approx(0.5 * (1 - 2e-3) ** 3, rel=1e-3) and lat["predicted_meets_target"]
    assert lat["widths"] == slim_widths
    m = lat["measured"]
    assert m["slim_ms"] > 0 and m["dense_ms"] > 0 and m["runs"] == 500
    assert m["error"] == pytest.approx(lat["predicted_ms"] / m["slim_ms"] - 1)
    assert summary["met_target"] and summary["val_accuracy"] >= summary["target_val_accuracy"]
    # `edgeprune bench RUN` on the table's device kind sets the prediction next to its own measurement.
    assert main(["bench", str(tmp_path / "run"), "--runs", "20", "--warmup", "1", "--warmup-seconds", "0"]) == 0
    check = json.loads((tmp_path / "run" / "compress.json").read_text())["latency"]["bench"]["cpu"]
    assert check["predicted_ms"] == pytest.approx(lat["predicted_ms"]) and check["measured_ms"] > 0
    assert check["error"] == pytest.approx(check["predicted_ms"] / check["measured_ms"] - 1)
    # Without a target the same ranking (here with the latency-weighted penalty too) prunes as far as the loss and
    # the accuracy allow: more than 3 neurons.
    free = run_compress(base, tmp_path / "free", _config(neuron_cost=f"latency:{path}", latency_penalty=True, **easy),
                        data=data, options=StageOptions(export_formats=(), report=False))
    assert free["latency"]["predicted_ms"] < 0.5 - 3e-3


def test_latency_options_are_validated():
    with pytest.raises(ConfigError, match="needs a latency table"):
        _config(target_speedup=2.0)
    with pytest.raises(ConfigError, match="latency:TABLE"):
        _config(neuron_cost="latency:")
    with pytest.raises(ConfigError, match="not both"):
        _config(latency_table="t.json", target_speedup=2.0, target_latency=1.0)
    with pytest.raises(ConfigError, match="at least 1"):
        _config(latency_table="t.json", target_speedup=0.5)
    with pytest.raises(ConfigError, match="different tables"):
        _config(neuron_cost="latency:a.json", latency_table="b.json")
    assert _config(neuron_cost="latency:a.json").latency_table == "a.json"
    # Runs recorded before these fields existed resume as they started.
    old = {k: v for k, v in _config().to_dict().items() if k not in ("latency_table", "target_latency",
                                                                     "target_speedup")}
    assert CompressConfig.from_dict(old, recorded=True).latency_table is None


def test_bad_profile_options_and_a_foreign_table_are_clear_errors(bn_setup, tmp_path, capsys):
    _, base = bn_setup
    rc = main(["profile", str(base), "--out", str(tmp_path / "t.json"), "--fractions", "0.5,2"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("error:") == 1 and "--fractions" in err
    m = create_model("lenet5")
    table = _hand_table(neuron_groups(m, (1, 28, 28)), {g.root: 1e-3 for g in neuron_groups(m, (1, 28, 28))})
    table.save(tmp_path / "lenet.json")
    data, _ = bn_setup
    with pytest.raises(ConfigError, match="profiled for other layers"):
        run_compress(base, tmp_path / "run", _config(neuron_cost=f"latency:{tmp_path / 'lenet.json'}", max_epochs=1),
                     data=data, options=StageOptions(export_formats=(), report=False))


def test_latency_penalty_weights_follow_the_documented_rule():
    """λ_n = λ·c_n / mean(c) over the alive prunable neurons: the factors average 1 over those neurons, the output
    layer keeps λ, and SeReNe's update shrinks each neuron by exactly 1 − λ·w_n·S̄_n."""
    from edgeprune.latency import latency_penalty_weights
    from edgeprune.regularize.neurons import find_neurons
    from edgeprune.regularize.update import insensitivity, serene_update_

    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    per = {g.root: k for g, k in zip(groups, (1e-2, 1e-3, 1e-4))}
    table = _hand_table(groups, per)
    w = latency_penalty_weights(table, groups, full_masks(m), m)
    sizes = {g.root: g.size for g in groups}
    mean = sum(per[r] * sizes[r] for r in per) / sum(sizes.values())
    for g in groups:
        assert torch.allclose(w[g.root], torch.full((g.size,), per[g.root] / mean, dtype=torch.float64))
    assert sum(float(w[r].sum()) for r in per) == pytest.approx(sum(sizes.values()))
    ng = find_neurons(m)
    out_layer = next(nl for nl in ng.layers if nl.is_output)
    assert out_layer.name not in w
    sens = {nl.name: torch.rand(nl.num_neurons) for nl in ng.layers}
    before = {nl.name: nl.layer.weight.detach().clone() for nl in ng.layers}
    serene_update_(ng.layers, sens, 0.1, w)
    for nl in ng.layers:
        factor = w.get(nl.name, torch.ones(nl.num_neurons, dtype=torch.float64)).float()
        keep = 1 - 0.1 * insensitivity(sens[nl.name]) * factor
        expect = before[nl.name] * keep.view(-1, *([1] * (before[nl.name].dim() - 1)))
        assert torch.allclose(nl.layer.weight.detach(), expect, atol=1e-7)
    with pytest.raises(ConfigError, match="latency-penalty"):
        _config(latency_penalty=True)


# --- on a phone -------------------------------------------------------------------------------------------------------

from adb_loopback.fixtures import adb_home, device, make_device, private_home  # noqa: E402,F401


def test_profile_on_an_adb_device_records_the_phone(bn_setup, device, tmp_path, capsys):  # noqa: F811
    """`edgeprune profile --device adb` over the real ADB wire protocol (loopback device): every variant timed by
    the phone runner in one alternating run, the table carrying the phone's device record."""
    _, base = bn_setup
    out = tmp_path / "phone.json"
    rc = main(["profile", str(base), "--out", str(out), "--device", "adb", "--serial", device.serial,
               "--runner", "python-ort", "--fractions", "0.5", "--runs", "4", "--warmup", "1",
               "--cooldown-seconds", "0", "--input-shape", "1,8,8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = LatencyTable.load(out)
    assert table.protocol["device"] == "adb" and table.protocol["runner"] == "python-ort"
    assert "EML-L29" in json.dumps(table.device)
    assert table.baseline_ms > 0 and all(v > 0 for g in table.groups for v in g.latency_ms)
    assert len(table.groups) == 4 and "wrote" in captured.out


def test_compress_refuses_a_bad_table_before_making_the_run_folder(tmp_path, capsys):
    """Missing, invalid, foreign (other layers, input shape or rounding) tables: one error line, exit 1, and no run
    folder left behind."""
    from edgeprune.checkpoint import save_checkpoint

    m = create_model("lenet5")
    ck = tmp_path / "lenet.pt"
    save_checkpoint(ck, m, meta={"dataset": "fashion-mnist", "input_shape": [1, 28, 28]})
    groups = neuron_groups(m, (1, 28, 28))
    good = _hand_table(groups, {g.root: 1e-3 for g in groups})
    good.model = {"arch": "lenet5", "input_shape": [1, 28, 28]}
    (tmp_path / "bad.json").write_text("{not json")
    other = _hand_table(groups, {g.root: 1e-3 for g in groups})
    other.groups[0].root = "features.not_here"
    other.model = dict(good.model)
    shape = _hand_table(groups, {g.root: 1e-3 for g in groups})
    shape.model = {"arch": "lenet5", "input_shape": [1, 32, 32]}
    rounded = _hand_table(groups, {g.root: 1e-3 for g in groups}, round_channels=8)
    rounded.model = dict(good.model)
    cases = [(tmp_path / "missing.json", [], "not found"), (tmp_path / "bad.json", [], "not valid JSON"),
             (other.save(tmp_path / "other.json"), [], "other layers"),
             (shape.save(tmp_path / "shape.json"), [], "input shape 1,32,32"),
             (rounded.save(tmp_path / "rounded.json"), [], "--round-channels 8"),
             (good.save(tmp_path / "good.json"), ["--round-channels", "4"], "drop --round-channels")]
    for i, (table, extra, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        rc = main(["compress", str(ck), "--out", str(out), "--neuron-cost", f"latency:{table}", *extra])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("error:") == 1 and message in err, (table, err)
        assert not out.exists(), f"{out} left behind after refusing {table}"


def test_an_unreachable_target_is_called_so_up_front(caplog):
    from edgeprune.regularize.loop import latency_model

    m = create_model("lenet5")
    groups = neuron_groups(m, (1, 28, 28))
    table = _hand_table(groups, {g.root: 0.1 / (g.size - 1) for g in groups}, base=1.0)
    with tempfile.TemporaryDirectory() as d:
        path = table.save(Path(d) / "t.json")
        with caplog.at_level(logging.WARNING, logger="edgeprune.regularize.loop"):
            latency_model(_config(latency_table=str(path), target_speedup=10.0), groups, (1, 28, 28))
        assert "likely unreachable" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgeprune.regularize.loop"):
            latency_model(_config(latency_table=str(path), target_speedup=1.2), groups, (1, 28, 28))
        assert "unreachable" not in caplog.text


def test_profile_of_a_model_cut_by_parts_says_tables_do_not_support_it():
    m = create_model("torchvision:shufflenet_v2_x0_5", num_classes=10)
    with pytest.raises(ConfigError, match="latency tables do not yet support models that torch-pruning can only cut "
                                          "by parts"):
        profile_model(m, (3, 32, 32), runs=2, warmup=0)


def test_the_final_line_says_whether_the_target_was_reached():
    from edgeprune.cli.compress import latency_line

    lat = {"device": "cpu", "predicted_ms": 0.09, "predicted_speedup": 1.2, "target_ms": 0.0108,
           "predicted_meets_target": False}
    assert "target 0.0108 ms not reached: the accuracy target stopped pruning first" in latency_line(lat, "accuracy")
    assert "not reached: the epoch budget (--max-epochs) stopped pruning first" in latency_line(lat, "max_epochs")
    lat.update(target_ms=0.1, predicted_meets_target=True)
    assert latency_line(lat).endswith("target 0.1000 ms reached")
    lat.update(target_ms=None, predicted_meets_target=None)
    assert "target" not in latency_line(lat)
