"""CLI: `edgeprune train` and `edgeprune info` end to end, one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from _synthetic import make_mnist_like
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.cli import main
from edgeprune.models import create_model


def test_info_json_reports_lenet5_params(tmp_path, capsys):
    save_checkpoint(tmp_path / "base.pt", create_model("lenet5"), meta={"input_shape": [1, 28, 28]})
    assert main(["info", str(tmp_path / "base.pt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_total"] == 431_080 and out["neurons"] == [20, 50, 500, 10]
    # MACs of LeNet-5 (Caffe) on 28x28: 20*24*24*25 + 50*8*8*500 + 800*500 + 500*10
    assert out["macs"] == 288_000 + 1_600_000 + 400_000 + 5_000
    assert [layer["params"] for layer in out["layers"]] == [520, 25_050, 400_500, 5_010]


def test_info_counts_nonzero_and_alive(tmp_path, capsys):
    model = create_model("lenet300")
    with torch.no_grad():
        model[1].weight[:100] = 0
        model[1].bias[:100] = 0
    save_checkpoint(tmp_path / "m.pt", model)
    assert main(["info", str(tmp_path / "m.pt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["alive_neurons"] == [200, 100, 10]
    assert out["params_nonzero"] == 266_610 - 100 * 785


def test_train_then_info(tmp_path, capsys):
    data = make_mnist_like(tmp_path / "data", n_train=300, n_test=60)
    rc = main(["train", "--arch", "lenet300", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "3",
               "--lr", "0.05", "--batch-size", "32", "--out", str(tmp_path / "m.pt")])
    assert rc == 0, capsys.readouterr().err
    assert "test top-1 error" in capsys.readouterr().out
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.meta["top1_error"] < 0.5  # the synthetic classes are easy; chance is 0.9
    assert loaded.meta["dataset"] == "mnist" and loaded.meta["input_shape"] == [1, 28, 28]
    assert "init_state_dict" in loaded.extra
    assert not (tmp_path / "m.pt.resume.pt").exists()


def test_train_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    from edgeprune import train as train_mod

    data = make_mnist_like(tmp_path / "data", n_train=200, n_test=40)
    cfg = train_mod.TrainConfig(arch="lenet300", dataset="mnist", data_dir=str(data), epochs=3, batch_size=32,
                                device="cpu")
    train_mod.train(cfg, tmp_path / "a.pt")

    real_epoch, calls = train_mod.train_epoch, {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, tmp_path / "b.pt")
    assert (tmp_path / "b.pt.resume.pt").exists() and not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
    train_mod.train(cfg, tmp_path / "b.pt", resume=True)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["info", "missing.pt"], "error: missing.pt: no such file"),
        (["train", "--dataset", "nope", "--out", "x.pt"], "error: unknown dataset 'nope'"),
        (["train", "--arch", "lenet6", "--dataset", "mnist", "--data-dir", "DATA", "--out", "x.pt"],
         "error: unknown architecture 'lenet6'"),
        (["train", "--lr", "0", "--out", "x.pt"], "error: --lr must be positive"),
        (["info", "lenet5", "--input-shape", "a,b"], "error: --input-shape must be comma-separated"),
    ],
)
def test_errors_are_one_line_exit_1(tmp_path, capsys, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    make_mnist_like(tmp_path / "DATA", n_train=20, n_test=10)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(pattern) and "\n" not in err and "Traceback" not in err


def test_usage_error_exit_2(capsys):
    assert main(["train", "--epochs", "zero"]) == 2


def test_corrupt_checkpoint_one_line_and_debug_traceback(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 broken zip")
    cmd = [sys.executable, "-m", "edgeprune", "info", str(tmp_path / "bad.pt")]
    env = {**os.environ, "EDGEPRUNE_DEBUG": "0"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "corrupt" in r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "EDGEPRUNE_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, mask):
    from edgeprune import _io

    old = os.umask(mask)
    try:
        written = [_io.write_text(tmp_path / "a.md", "x"), _io.write_json(tmp_path / "b.json", {"a": 1}),
                   _io.write_bytes(tmp_path / "c.bin", b"x")]
        with open(tmp_path / "plain", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    expected = os.stat(tmp_path / "plain").st_mode & 0o777
    assert expected == 0o666 & ~mask
    for p in written:
        assert os.stat(p).st_mode & 0o777 == expected, p
