"""The regularize → threshold loop (SeReNe Alg. 1) end to end: run folder, resume, baselines, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune import _io
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.data import Batches, DataBundle, TensorSplit
from edgeprune.models import create_model
from edgeprune.pipeline import run_compress
from edgeprune.regularize.config import PRESETS, CompressConfig, make_config
from edgeprune.train import train_epoch

pytestmark = pytest.mark.usefixtures("one_thread")



def _split(n: int, g: torch.Generator) -> TensorSplit:
    """Three classes: the brightest of three 8×8 image bands (learnable by tiny-cnn in a few epochs)."""
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for k in range(3):
        x[y == k, 0, 2 * k + 1: 2 * k + 3] += 1.5
    return TensorSplit(x, y)


def trained_baseline(tmp_path_factory, arch: str, sizes=(320, 120, 120)):
    """The three-band task and ``arch`` trained on it for 6 epochs, saved as a checkpoint: (data, path)."""
    g = torch.Generator().manual_seed(0)
    data = DataBundle("synthetic", *(_split(n, g) for n in sizes), (1, 8, 8), 3, "")
    torch.manual_seed(0)
    model = create_model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for e in range(6):
        b = Batches(data.train, 32, shuffle=True)
        b.set_epoch(e)
        train_epoch(model, b, opt)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_checkpoint(path, model, meta={"dataset": "synthetic"})
    return data, path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return trained_baseline(tmp_path_factory, "tiny-cnn")


def _config(**kw) -> CompressConfig:
    base = dict(method="serene-lb", lam=0.02, twt=0.5, pwe=1, lr=0.01, momentum=0.9, max_epochs=6, batch_size=40,
                target_drop=0.05, device="cpu", prune="weights")
    base.update(kw)
    return CompressConfig(**base)


def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in _io.read_jsonl(run / "metrics.jsonl")]


def test_run_folder_contents_and_pinned_zeros(setup, tmp_path):
    data, base = setup
    run = tmp_path / "run"
    summary = run_compress(base, run, _config(), data=data)
    for name in ("manifest.json", "metrics.jsonl", "baseline.pt", "masked.pt", "compress.json", "state.pt"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["type"] == "edgeprune.CompressConfig" and manifest["versions"]["torch"]
    saved = json.loads((run / "compress.json").read_text())
    for side in ("baseline", "pruned"):
        for key in ("params_total", "params_nonzero", "neurons", "macs", "top1_error"):
            assert key in saved[side]
    assert saved["compression_ratio"] == pytest.approx(saved["baseline"]["params_total"]
                                                       / saved["pruned"]["params_nonzero"])
    rows = _rows(run)
    thresholds = [r for r in rows if r["kind"] == "threshold"]
    assert thresholds and all(r["threshold"] > 0 for r in thresholds)
    assert all("neurons_alive" in r and "val_accuracy" in r for r in rows)
    masked = load_checkpoint(run / "masked.pt")
    assert masked.meta["top1_error"] == pytest.approx(summary["pruned"]["top1_error"])
    nonzero = sum(int(p.ne(0).sum()) for p in masked.model.parameters())
    assert nonzero == summary["pruned"]["params_nonzero"] < summary["baseline"]["params_total"]
    # Validation accuracy of the result meets the target.
    assert summary["val_accuracy"] >= summary["target_val_accuracy"]
    assert load_checkpoint(run / "baseline.pt").meta["top1_error"] == pytest.approx(summary["baseline"]["top1_error"])


def test_kill_and_resume_reproduces_the_uninterrupted_run(setup, tmp_path):
    data, base = setup
    cfg = _config(max_epochs=5)
    full = tmp_path / "full"
    run_compress(base, full, cfg, data=data)

    cut = tmp_path / "cut"

    def interrupt(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_compress(base, cut, cfg, data=data, on_epoch=interrupt)
    assert not (cut / "masked.pt").exists()
    run_compress(None, cut, cfg, resume=True, data=data)

    a = load_checkpoint(full / "masked.pt").model.state_dict()
    b = load_checkpoint(cut / "masked.pt").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _rows(full) == _rows(cut)
    sa = torch.load(full / "state.pt", weights_only=True)
    sb = torch.load(cut / "state.pt", weights_only=True)
    for k in sa["masks"]:
        assert torch.equal(sa["masks"][k], sb["masks"][k])


def test_budget_stop_then_resume_with_larger_budget(setup, tmp_path):
    data, base = setup
    full = tmp_path / "full"
    run_compress(base, full, _config(max_epochs=4), data=data)
    part = tmp_path / "part"
    run_compress(base, part, _config(max_epochs=2), data=data)
    run_compress(None, part, _config(max_epochs=4), resume=True, data=data)
    a = load_checkpoint(full / "masked.pt").model.state_dict()
    b = load_checkpoint(part / "masked.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_options(setup, tmp_path):
    from edgeprune.errors import ConfigError

    data, base = setup
    run = tmp_path / "run"
    run_compress(base, run, _config(max_epochs=1), data=data)
    with pytest.raises(ConfigError, match="lam"):
        run_compress(None, run, _config(max_epochs=2, lam=0.5), resume=True, data=data)
    with pytest.raises(ConfigError, match="--resume"):
        run_compress(base, run, _config(max_epochs=1), data=data)


@pytest.mark.parametrize("method", ["lobster", "l2", "serene-exact", "serene-ub", "serene-local"])
def test_other_methods_run_through_the_same_loop(setup, tmp_path, method):
    data, base = setup
    run = tmp_path / method
    summary = run_compress(base, run, _config(method=method, max_epochs=3, lam=0.0 if method == "l2" else 0.02),
                           data=data)
    assert summary["method"] == method
    assert [r["kind"] for r in _rows(run)].count("epoch") == 3
    masked = load_checkpoint(run / "masked.pt").model
    assert sum(int(p.ne(0).sum()) for p in masked.parameters()) == summary["pruned"]["params_nonzero"]


def test_config_validation_presets_and_file(tmp_path):
    from edgeprune.errors import ConfigError

    with pytest.raises(ConfigError, match="--twt"):
        CompressConfig(twt=-1)
    with pytest.raises(ConfigError, match="--method"):
        CompressConfig(method="magic")
    cfg = make_config("lenet5-fmnist", lr=0.01)
    assert (cfg.lam, cfg.twt, cfg.pwe, cfg.lr, cfg.dataset) == (1e-5, 1.0, 20, 0.01, "fashion-mnist")
    assert CompressConfig(method="l2").weight_decay == 1e-4 and CompressConfig(method="l2").lam == 0
    assert set(PRESETS) >= {"lenet5-fmnist", "lenet300-mnist", "lenet5-mnist", "vgg16-cifar10", "resnet32-cifar10",
                            "alexnet-cifar100"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert CompressConfig.load(path) == cfg
    path.write_text(json.dumps({**cfg.to_dict(), "bogus": 1}))
    with pytest.raises(ConfigError, match="bogus"):
        CompressConfig.load(path)


def test_cli_end_to_end_and_one_line_errors(tmp_path, capsys):
    from tests._synthetic import make_mnist_like

    from edgeprune.cli import main

    folder = make_mnist_like(tmp_path / "mnist", n_train=300, n_test=60)
    torch.manual_seed(0)
    model = create_model("tiny-mlp", in_features=784, num_classes=10, hidden=16)
    ck = tmp_path / "m.pt"
    save_checkpoint(ck, model, meta={"dataset": "mnist"})
    run = tmp_path / "run"
    rc = main(["compress", str(ck), "--data-dir", str(folder), "--max-epochs", "2", "--pwe", "1", "--lambda", "0.01",
               "--target-drop", "0.5", "--device", "cpu", "--out", str(run), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = json.loads(out.out)
    assert summary["dataset"] == "mnist" and (run / "masked.pt").exists()

    rc = main(["compress", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error:") and len(err.splitlines()) == 1
    rc = main(["compress", str(ck), "--method", "magic", "--out", str(tmp_path / "r3")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--method" in err and len(err.splitlines()) == 1
    rc = main(["compress", "--resume", str(tmp_path / "nothing")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1


def test_lobster_trains_from_scratch(setup, tmp_path):
    """LOBSTER needs no pre-trained model: from a fresh initialization (BN β = 0) it learns and prunes."""
    data, _ = setup
    torch.manual_seed(1)
    fresh = tmp_path / "fresh.pt"
    save_checkpoint(fresh, create_model("tiny-cnn"), meta={"dataset": "synthetic"})
    # No final step: its accuracy target (the untrained baseline's, i.e. chance) would rightly allow pruning
    # almost everything the run learned.
    summary = run_compress(fresh, tmp_path / "run", _config(method="lobster", lr=0.05, max_epochs=4,
                                                            target_drop=0.0, final_step=False), data=data)
    model = load_checkpoint(tmp_path / "run" / "masked.pt").model
    assert summary["pruned"]["top1_error"] < summary["baseline"]["top1_error"]
    assert model[1].bias.abs().sum() > 0  # BN β left zero-initialized would mean it was wrongly pinned
