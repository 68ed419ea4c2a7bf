"""`edgeprune analyze sensitivity` (SeReNe Fig. 3) on a tiny model and a small IDX dataset."""

from __future__ import annotations

import json

import torch

from edgeprune.checkpoint import save_checkpoint
from edgeprune.models import create_model


def test_analyze_sensitivity_writes_png_and_ordered_means(tmp_path, capsys):
    from tests._synthetic import make_mnist_like

    from edgeprune.cli import main

    folder = make_mnist_like(tmp_path / "mnist", n_train=100, n_test=60)
    torch.manual_seed(0)
    ck = tmp_path / "m.pt"
    save_checkpoint(ck, create_model("tiny-mlp", in_features=784, num_classes=10, hidden=12), meta={"dataset": "mnist"})
    png = tmp_path / "fig3.png"
    rc = main(["analyze", "sensitivity", str(ck), "--data-dir", str(folder), "--batches", "2", "--batch-size", "20",
               "--device", "cpu", "--out", str(png), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    stats = json.loads(out.out)["stats"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fc = {m: stats[m]["fc"] for m in ("exact", "lb", "ub")}
    assert fc["exact"]["neurons"] == 24  # two hidden layers of 12; the output layer is left out
    assert fc["lb"]["mean"] <= fc["exact"]["mean"] <= fc["ub"]["mean"]
