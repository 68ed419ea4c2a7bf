"""The built-in datasets: Fashion-MNIST, MNIST (IDX files), CIFAR-10 and CIFAR-100 (python batches)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DatasetError
from ._readers import read_cifar_batch, read_idx
from ._registry import DatasetEntry, register_dataset

_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _idx_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _idx_locate(folder: Path) -> bool:
    return all(_idx_file(folder, s) is not None for s in _IDX_NAMES.values())


def _idx_read(folder: Path):
    t = {k: read_idx(_idx_file(folder, s)) for k, s in _IDX_NAMES.items()}  # type: ignore[arg-type]
    if t["train_x"].shape[0] != t["train_y"].shape[0] or t["test_x"].shape[0] != t["test_y"].shape[0]:
        raise DatasetError(f"image and label counts differ in {folder}; the files do not belong together")
    return t["train_x"].unsqueeze(1), t["train_y"], t["test_x"].unsqueeze(1), t["test_y"]


def _torchvision_download(cls_name: str):
    def download(target: Path) -> None:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        cls(str(target), train=True, download=True)
        cls(str(target), train=False, download=True)

    return download


def _random_crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """CIFAR augmentation on a batch: random crop of the 4-pixel zero-padded image and horizontal flip."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = torch.arange(w).view(1, w).expand(n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    cols = (dx.view(n, 1) + cols).view(n, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    chan = torch.arange(c).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def _cifar_locate(folder_name: str, files: tuple[str, ...]):
    def locate(folder: Path) -> bool:
        return all((folder / folder_name / f).is_file() for f in files)

    return locate


def _cifar_read(folder_name: str, train_files: tuple[str, ...], test_files: tuple[str, ...], label_key: str):
    def read(folder: Path):
        def load(names):
            xs, ys = [], []
            for f in names:
                batch = read_cifar_batch(folder / folder_name / f)
                xs.append(torch.as_tensor(batch["data"]).view(-1, 3, 32, 32))
                ys.append(torch.as_tensor(batch[label_key]))
            return torch.cat(xs), torch.cat(ys)

        xtr, ytr = load(train_files)
        xte, yte = load(test_files)
        return xtr, ytr, xte, yte

    return read


_FMNIST_HOW = "install it with 'apt-get install dataset-fashion-mnist' (Debian) or put the four IDX files in the folder"
register_dataset(
    DatasetEntry(
        name="fashion-mnist",
        locate=_idx_locate,
        read=_idx_read,
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        subdirs=("fashion-mnist", "FashionMNIST/raw"),
        download=_torchvision_download("FashionMNIST"),
        how_to_get=_FMNIST_HOW,
    )
)
register_dataset(
    DatasetEntry(
        name="mnist",
        locate=_idx_locate,
        read=_idx_read,
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        system_dirs=("/usr/share/datasets/mnist",),
        subdirs=("mnist", "MNIST/raw"),
        download=_torchvision_download("MNIST"),
        how_to_get="put the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in the folder",
    )
)
_C10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
register_dataset(
    DatasetEntry(
        name="cifar10",
        locate=_cifar_locate("cifar-10-batches-py", _C10_TRAIN + ("test_batch",)),
        read=_cifar_read("cifar-10-batches-py", _C10_TRAIN, ("test_batch",), "labels"),
        input_shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        download=_torchvision_download("CIFAR10"),
        how_to_get="extract cifar-10-python.tar.gz so that cifar-10-batches-py/ is in the folder",
        augment=_random_crop_flip,
    )
)
register_dataset(
    DatasetEntry(
        name="cifar100",
        locate=_cifar_locate("cifar-100-python", ("train", "test")),
        read=_cifar_read("cifar-100-python", ("train",), ("test",), "fine_labels"),
        input_shape=(3, 32, 32),
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        download=_torchvision_download("CIFAR100"),
        how_to_get="extract cifar-100-python.tar.gz so that cifar-100-python/ is in the folder",
        augment=_random_crop_flip,
    )
)
