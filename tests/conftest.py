"""Shared test configuration: quiet progress bars, small thread counts, the real-data marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EDGEPRUNE_PROGRESS", "0")

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fmnist_available() -> bool:
    return all((FMNIST_DIR / f"{n}.gz").exists() or (FMNIST_DIR / n).exists() for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def pytest_collection_modifyitems(config, items):
    if fmnist_available():
        return
    skip = pytest.mark.skip(reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's cache and data folders."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("EDGEPRUNE_DATA", raising=False)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny tensors on 2 shared cores: one intra-op thread is faster than several fighting ones."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
