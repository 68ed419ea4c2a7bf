"""Datasets: real on-disk formats read safely, deterministic splits, clear errors when data is missing."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from _synthetic import make_cifar10_like, make_mnist_like, write_idx
from conftest import FMNIST_DIR
from edgeprune.data import Batches, TensorSplit, load_dataset, split_train_val
from edgeprune.data._readers import read_cifar_batch, read_idx
from edgeprune.errors import DatasetError


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        p = write_idx(tmp_path / f"a{gz}", arr, gz=gz)
        assert torch.equal(read_idx(p), torch.from_numpy(arr))


def test_idx_damage_detected(tmp_path):
    p = write_idx(tmp_path / "x", np.zeros((4, 5), np.uint8), gz=False)
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated or damaged"):
        read_idx(p)
    (tmp_path / "y").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "y")


def test_load_from_data_dir_and_env(tmp_path, monkeypatch):
    make_mnist_like(tmp_path / "mnist", n_train=100, n_test=30)
    b = load_dataset("mnist", data_dir=tmp_path / "mnist", seed=1)
    assert (len(b.train), len(b.val), len(b.test)) == (90, 10, 30)
    assert b.train.x.shape[1:] == (1, 28, 28) and b.train.x.dtype == torch.float32
    monkeypatch.setenv("EDGEPRUNE_DATA", str(tmp_path))
    b2 = load_dataset("mnist", seed=1)  # found through $EDGEPRUNE_DATA/mnist
    assert torch.equal(b.val.x, b2.val.x)


def test_missing_dataset_lists_where_it_looked(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert "mnist not found" in msg and str(tmp_path / "nowhere") in msg and "--download" in msg
    assert "\n" not in msg
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_split_is_deterministic_and_disjoint():
    a_tr, a_va = split_train_val(1000, seed=3, val_fraction=0.1)
    b_tr, b_va = split_train_val(1000, seed=3, val_fraction=0.1)
    c_tr, c_va = split_train_val(1000, seed=4, val_fraction=0.1)
    assert torch.equal(a_va, b_va) and not torch.equal(a_va, c_va)
    assert len(a_va) == 100 and len(set(a_tr.tolist()) | set(a_va.tolist())) == 1000


def test_cifar_batches_read_without_code_execution(tmp_path):
    make_cifar10_like(tmp_path)
    b = load_dataset("cifar10", data_dir=tmp_path)
    assert b.train.x.shape[1:] == (3, 32, 32) and len(b.test) == 20 and b.num_classes == 10
    aug = b.augment(b.train.x[:8], torch.Generator().manual_seed(0))
    assert aug.shape == (8, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "evil").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing to load"):
        read_cifar_batch(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


def test_crop_flip_is_a_crop_of_the_padded_image():
    x = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32)
    from edgeprune.data.builtin import _random_crop_flip

    out = _random_crop_flip(x, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        found = any(
            torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32]) or
            torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1))
            for dy in range(9) for dx in range(9)
        )
        assert found


def test_batches_deterministic_per_epoch():
    ds = TensorSplit(torch.arange(100).float().view(100, 1), torch.arange(100))
    b = Batches(ds, 32, shuffle=True, seed=5)
    b.set_epoch(0)
    e0 = torch.cat([y for _, y in b])
    e0_again = torch.cat([y for _, y in b])
    b.set_epoch(1)
    e1 = torch.cat([y for _, y in b])
    assert torch.equal(e0, e0_again) and not torch.equal(e0, e1)
    assert sorted(e0.tolist()) == list(range(100)) and len(b) == 4
    shards = [torch.cat([y for _, y in Batches(ds, 8, shuffle=True, seed=5, rank=r, world_size=3)]) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and set(torch.cat(shards).tolist()) == set(range(100))


@pytest.mark.realdata
def test_real_fashion_mnist_official_split():
    b = load_dataset("fashion-mnist", seed=0)
    assert b.root == str(FMNIST_DIR)
    assert (len(b.train), len(b.val), len(b.test)) == (54_000, 6_000, 10_000)
    assert torch.bincount(b.test.y).tolist() == [1000] * 10
    assert abs(float(b.train.x.mean())) < 0.05 and abs(float(b.train.x.std()) - 1) < 0.05
