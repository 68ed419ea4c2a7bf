"""The loop with neuron-level thresholding, the final step under the accuracy target, and LOBSTER's stop rule."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune import _io
from edgeprune.checkpoint import load_checkpoint
from edgeprune.pipeline import StageOptions, run_compress
from edgeprune.regularize.config import CompressConfig
from edgeprune.threshold.neurons import group_alive, neuron_groups
from test_compress import trained_baseline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bn_setup(tmp_path_factory):
    """tiny-resnet (conv + BN, residual adds, projection shortcut) trained on the three-band task."""
    return trained_baseline(tmp_path_factory, "tiny-resnet", sizes=(480, 150, 150))


def _config(**kw) -> CompressConfig:
    base = dict(method="serene-lb", lam=0.02, twt=0.5, pwe=1, lr=0.01, momentum=0.9, max_epochs=4, batch_size=40,
                target_drop=0.05, device="cpu", prune="neurons")
    base.update(kw)
    return CompressConfig(**base)


# The loop and surgery are what these tests check; exports and the report are covered in test_pipeline_stages.
FAST = StageOptions(export_formats=(), report=False)


def _rows(run):
    return list(_io.read_jsonl(run / "metrics.jsonl"))


def test_neuron_pruning_kills_whole_bn_channels_and_surgery_cuts_them(bn_setup, tmp_path):
    data, base = bn_setup
    run = tmp_path / "run"
    summary = run_compress(base, run, _config(), data=data, options=FAST)
    masked = load_checkpoint(run / "masked.pt").model.eval()
    groups = neuron_groups(masked, (1, 8, 8))
    masks = {n: p.detach().ne(0) for n, p in masked.named_parameters()}
    dead = {g.root: int((~group_alive(g, masks)).sum()) for g in groups}
    assert sum(dead.values()) > 0, dead
    params = dict(masked.named_parameters())
    for g in groups:  # a dead neuron has every parameter zero, BN γ and β included
        alive = group_alive(g, masks)
        for pname, dim, ridx, midx in g.params:
            rows = params[pname].detach().movedim(dim, 0)[midx]
            assert torch.count_nonzero(rows[~alive[ridx]]) == 0
    thresholds = [r for r in _rows(run) if r["kind"] == "threshold"]
    assert thresholds and sum(r["neurons_pruned"] for r in thresholds) > 0
    # Surgery removes exactly the dead channels (no constant left to fold) and the slim model is smaller.
    rep = summary["slim"] if "slim" in summary else json.loads((run / "compress.json").read_text())["slim"]
    assert rep["params_total"] < summary["baseline"]["params_total"]
    slim = load_checkpoint(run / "model.pt").model.eval()
    assert slim.stem[0].out_channels == masked.stem[0].out_channels - dead.get("stem.0", 0)
    x = data.test.x[:32]
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5, rtol=0)
    assert summary["met_target"] and summary["val_accuracy"] >= summary["target_val_accuracy"]


def test_budget_before_any_plateau_still_returns_a_pruned_network(bn_setup, tmp_path):
    """One epoch, no plateau (PWE 50): no threshold step runs in the loop, the final step prunes under the target."""
    data, base = bn_setup
    summary = run_compress(base, tmp_path / "run", _config(max_epochs=1, pwe=50), data=data, options=FAST)
    assert summary["stop_reason"] == "max_epochs" and summary["thresholds"] == []
    assert summary["final_step"]["neurons_pruned"] > 0 and summary["met_target"]
    assert summary["compression_ratio"] > 1.0
    assert summary["val_accuracy"] >= summary["target_val_accuracy"]
    assert [r["kind"] for r in _rows(tmp_path / "run")][-1] == "final"
    # Without the final step the same budget returns the input network, as before.
    plain = run_compress(base, tmp_path / "plain", _config(max_epochs=1, pwe=50, final_step=False), data=data, options=FAST)
    assert plain["compression_ratio"] == pytest.approx(1.0)


def test_step_that_overshoots_the_target_falls_back_and_prunes_within_it(bn_setup, tmp_path):
    """A huge TWT prunes far past the target; the run returns the last good network pruned under the target."""
    data, base = bn_setup
    summary = run_compress(base, tmp_path / "run", _config(twt=50.0, target_drop=0.02, max_epochs=6), data=data, options=FAST)
    rows = _rows(tmp_path / "run")
    assert summary["stop_reason"] == "target"
    assert summary["met_target"] and summary["val_accuracy"] >= summary["target_val_accuracy"]
    assert summary["final_step"] is not None and rows[-1]["kind"] == "final"
    assert summary["compression_ratio"] > 1.0


def test_lobster_rule_stops_when_a_step_prunes_nothing(bn_setup, tmp_path):
    """TWT = 0 with a loss that cannot improve by pruning: the first step prunes nothing and the run ends there,
    not at max_epochs."""
    data, base = bn_setup
    summary = run_compress(base, tmp_path / "run", _config(twt=0.0, lam=0.0, method="l2", weight_decay=0.0, lr=1e-6,
                                                           max_epochs=20, final_step=False, prune="weights"),
                           data=data, options=FAST)
    assert summary["stop_reason"] == "nothing_pruned" and summary["epochs"] < 20


def test_weights_mode_is_the_papers_global_magnitude_threshold(bn_setup, tmp_path):
    data, base = bn_setup
    run_compress(base, tmp_path / "run", _config(prune="weights", final_step=False), data=data, options=FAST)
    thresholds = [r for r in _rows(tmp_path / "run") if r["kind"] == "threshold"]
    assert thresholds and all(r["threshold"] > 0 and r["neurons_pruned"] == 0 for r in thresholds)


def test_config_rejects_unknown_modes_and_old_runs_resume_as_they_started():
    from edgeprune.errors import ConfigError

    with pytest.raises(ConfigError, match="--prune must be one of"):
        CompressConfig(prune="filters")
    with pytest.raises(ConfigError, match="--neuron-score"):
        CompressConfig(neuron_score="random")
    old = CompressConfig.from_dict({"method": "serene-lb"}, recorded=True)
    assert old.prune == "weights" and old.final_step is False
    assert CompressConfig.from_dict({"method": "serene-lb"}).prune == "neurons"
