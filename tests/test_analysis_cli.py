"""`edgeprune oneshot` and `edgeprune analyze entropy | sharpness | landscape` end to end on a small synthetic
MNIST-like dataset (real IDX files) and a narrow LeNet-300."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.cli import main
from edgeprune.models import create_model

from _synthetic import make_mnist_like


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A briefly trained narrow LeNet-300 baseline with its initial weights, like `edgeprune train` writes."""
    from edgeprune.data import Batches, load_dataset
    from edgeprune.train import evaluate, train_epoch

    root = tmp_path_factory.mktemp("analysis-cli")
    data_dir = make_mnist_like(root / "mnist", n_train=240, n_test=60)
    torch.manual_seed(0)
    model = create_model({"name": "lenet300", "kwargs": {"hidden": [24, 12]}})
    init = copy.deepcopy(model.state_dict())
    data = load_dataset("mnist", data_dir)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        train_epoch(model, Batches(data.train, 32, shuffle=True, seed=epoch), opt)
    te = evaluate(model, Batches(data.test, 64))
    meta = {"dataset": "mnist", "input_shape": [1, 28, 28], "num_classes": 10, "seed": 0,
            "top1_error": te["top1_error"]}
    base = save_checkpoint(root / "base.pt", model, meta=meta, extra={"init_state_dict": init})
    no_init = save_checkpoint(root / "no-init.pt", model, meta=meta)
    return {"root": root, "data": str(data_dir), "base": str(base), "no_init": str(no_init)}


def _run(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_oneshot_rewind_writes_checkpoints_with_meta(setup, capsys):
    out = setup["root"] / "rewind"
    code, stdout, err = _run(capsys, ["oneshot", setup["base"], "--mode", "rewind", "--sparsity", "0.8",
                                      "--epochs", "1", "--seeds", "2", "--data-dir", setup["data"],
                                      "--device", "cpu", "--out", str(out), "--json"])
    assert code == 0, err
    summary = json.loads(stdout)
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    init = torch.load(setup["base"], weights_only=True)["init_state_dict"]
    for run in summary["runs"]:
        ld = load_checkpoint(run["path"])
        assert ld.meta["sparsity"] == pytest.approx(0.8, abs=1e-4)
        assert 0.0 <= ld.meta["top1_error"] <= 1.0
        assert ld.meta["oneshot"]["mode"] == "rewind"
        masks = ld.extra["masks"]
        for name, p in ld.model.named_parameters():
            assert bool((p.detach()[~masks[name]] == 0).all())  # pinned through training
        assert not torch.equal(ld.model.state_dict()["1.weight"], init["1.weight"] * masks["1.weight"])
    assert (out / "oneshot-rewind.json").exists()


def test_oneshot_match_random_structure(setup, capsys):
    ref = setup["root"] / "ref"
    assert main(["oneshot", setup["base"], "--sparsity", "0.9", "--epochs", "0", "--data-dir", setup["data"],
                 "--device", "cpu", "--out", str(ref)]) == 0
    capsys.readouterr()
    out = setup["root"] / "rs"
    code, stdout, err = _run(capsys, ["oneshot", setup["base"], "--mode", "random-structure", "--match",
                                      str(ref / "finetune-seed0.pt"), "--epochs", "1", "--train-subset", "100",
                                      "--data-dir", setup["data"], "--device", "cpu", "--out", str(out), "--json"])
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["match_sparsity"] == pytest.approx(0.9, abs=1e-4)
    got = load_checkpoint(summary["runs"][0]["path"])
    ref_model = load_checkpoint(ref / "finetune-seed0.pt").model
    for (name, p), q in zip(got.model.named_parameters(), ref_model.parameters()):
        assert int(got.extra["masks"][name].sum()) == int(q.ne(0).sum())  # same count per layer
    # --match-mask: the matched model's own structure, rewound to the initial values
    out2 = setup["root"] / "mm"
    code, stdout, err = _run(capsys, ["oneshot", setup["base"], "--mode", "rewind", "--match",
                                      str(ref / "finetune-seed0.pt"), "--match-mask", "--epochs", "0", "--data-dir", setup["data"], "--device", "cpu",
                                      "--out", str(out2), "--json"])
    assert code == 0, err
    rewound = load_checkpoint(json.loads(stdout)["runs"][0]["path"]).model
    init = torch.load(setup["base"], weights_only=True)["init_state_dict"]
    for (name, p), q in zip(rewound.named_parameters(), ref_model.parameters()):
        keep = q.ne(0)
        assert torch.equal(p.detach().ne(0), keep) and torch.equal(p.detach()[keep], init[name][keep])


@pytest.mark.parametrize("args,needle", [
    (["--mode", "rewind", "--sparsity", "0.5"], "init_state_dict"),
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "0.5", "--match", "x.pt"], "exactly one"),
    (["--mode", "prune", "--sparsity", "0.5"], "--mode"),
    (["--match", "nowhere"], "no such file"),
])
def test_oneshot_errors_are_one_line(setup, capsys, args, needle):
    code, _, err = _run(capsys, ["oneshot", setup["no_init"], *args, "--data-dir", setup["data"],
                                 "--out", str(setup["root"] / "bad")])
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_analyze_entropy_compare_second_order(setup, capsys):
    ref = setup["root"] / "ent-src"
    assert main(["oneshot", setup["base"], "--sparsity", "0.7", "--epochs", "0", "--data-dir", setup["data"],
                 "--device", "cpu", "--out", str(ref)]) == 0
    capsys.readouterr()
    out = setup["root"] / "entropy"
    code, stdout, err = _run(capsys, ["analyze", "entropy", setup["base"], "--compare", str(ref / "finetune-seed0.pt"),
                                      "--second-order", "--labels", "dense,pruned", "--samples", "100",
                                      "--data-dir", setup["data"], "--device", "cpu", "--out", str(out), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert [m["label"] for m in report["models"]] == ["dense", "pruned"]
    layers = report["models"][0]["layers"]
    assert [row["neurons"] for row in layers] == [24, 12]
    assert [(row["name"], row["producer"]) for row in layers] == [("2", "1"), ("4", "3")]
    for row in layers:
        assert 0.0 <= row["h1"]["mean"] <= 10.0 and row["pairs"] == "all"
        assert row["h2"]["count"] == row["neurons"] * (row["neurons"] - 1) // 2
        assert row["h2"]["max"] <= 20.0 and row["psp_sq_mean"] > 0
        alive = row["neurons"] - row["always_off"]
        assert row["h1_alive"]["count"] == alive and row["h2_alive"]["count"] == alive * (alive - 1) // 2
    for name in ("entropy.json", "entropy.npz", "entropy_order1.png", "entropy_order2.png", "psp_norm.png"):
        assert (out / name).stat().st_size > 0
    import numpy as np

    arrays = np.load(out / "entropy.npz")
    assert arrays["dense/2/h1"].shape == (24,)


def test_analyze_sharpness(setup, capsys):
    code, stdout, err = _run(capsys, ["analyze", "sharpness", setup["base"], "--top", "3", "--batches", "1",
                                      "--batch-size", "64", "--iters", "20", "--data-dir", setup["data"],
                                      "--device", "cpu", "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    assert len(result["eigenvalues"]) == 3 and result["samples"] == 64
    assert result["eigenvalues"] == sorted(result["eigenvalues"], reverse=True) and result["eigenvalues"][0] > 0


def test_analyze_landscape(setup, capsys):
    other = setup["root"] / "land-src"
    assert main(["oneshot", setup["base"], "--sparsity", "0.6", "--epochs", "1", "--data-dir", setup["data"],
                 "--device", "cpu", "--out", str(other)]) == 0
    capsys.readouterr()
    out = setup["root"] / "landscape"
    code, stdout, err = _run(capsys, ["analyze", "landscape", setup["base"], str(other / "finetune-seed0.pt"),
                                      "--grid", "2", "--samples", "64", "--data-dir", setup["data"],
                                      "--device", "cpu", "--out", str(out), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert len(report["alphas"]) == 5 and len(report["betas"]) == 5
    from edgeprune.analysis.landscape import mean_loss
    from edgeprune.analysis.reports import sample_batches

    batches, _ = sample_batches("mnist", setup["data"], "train", 64, 512)
    assert report["loss_a"] == mean_loss(load_checkpoint(setup["base"]).model, batches)
    assert (out / "landscape.png").stat().st_size > 0


def test_analyze_errors_are_one_line(setup, capsys):
    code, _, err = _run(capsys, ["analyze", "entropy", str(setup["root"] / "missing.pt"), "--out",
                                 str(setup["root"] / "e")])
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "no such file" in err
    other = save_checkpoint(setup["root"] / "mlp.pt", create_model("lenet300"), meta={"dataset": "mnist"})
    code, _, err = _run(capsys, ["analyze", "landscape", setup["base"], str(other), "--data-dir", setup["data"],
                                 "--out", str(setup["root"] / "l")])
    assert code == 1 and err.count("\n") == 1 and "same architecture" in err
    code, _, err = _run(capsys, ["analyze", "sharpness", setup["base"], "--method", "arnoldi"])
    assert code == 1 and err.count("\n") == 1 and "--method" in err
