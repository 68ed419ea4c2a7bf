"""Dataset registry: a name → train/validation/test splits of normalized tensors, found on disk.

Root resolution, first hit wins: ``data_dir`` (``--data-dir``), ``$EDGEPRUNE_DATA``, the user cache dir
(``$XDG_CACHE_HOME/edgeprune/datasets``, default ``~/.cache/edgeprune/datasets``), then system folders a dataset knows
(Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``). Nothing is downloaded unless
``download=True``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import DatasetError


@dataclasses.dataclass
class TensorSplit:
    """Samples as one float tensor (already normalized) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.x[idx], self.y[idx])


@dataclasses.dataclass
class DataBundle:
    name: str
    train: object
    val: object
    test: object
    input_shape: tuple[int, ...]
    num_classes: int
    root: str
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    """Batched training-time augmentation (tensors in, tensors out), or None."""
    options: dict | None = None
    """The image options that produced these tensors (size, channels, resize, mean, std), recorded in checkpoints as
    ``meta["data_options"]`` so later stages rebuild the same input; None: the dataset as published."""
    classes: list[str] | None = None
    detected: str = ""
    """What was detected or computed (image folders), for the user."""


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    name: str
    locate: Callable[[Path], bool]
    """True when the folder holds this dataset in a layout ``read`` understands."""
    read: Callable[[Path], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    """Folder → (train images uint8 NCHW, train labels, test images, test labels)."""
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    system_dirs: tuple[str, ...] = ()
    subdirs: tuple[str, ...] = ()
    """Names under a root where the files may live (torchvision's layouts among them)."""
    download: Callable[[Path], None] | None = None
    how_to_get: str = ""
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> None:
    _DATASETS[entry.name] = entry


def list_datasets() -> list[str]:
    return sorted(_DATASETS) + ["imagefolder:PATH"]


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeprune" / "datasets"


def base_roots(entry: DatasetEntry, data_dir: str | os.PathLike | None) -> list[Path]:
    """The folders searched, in order (each also with the dataset's known sub-folder names)."""
    roots: list[Path] = []
    if data_dir:
        roots.append(Path(data_dir))
    if os.environ.get("EDGEPRUNE_DATA"):
        roots.append(Path(os.environ["EDGEPRUNE_DATA"]))
    roots.append(user_cache_dir())
    roots += [Path(d) for d in entry.system_dirs]
    return roots


def candidate_roots(entry: DatasetEntry, data_dir: str | os.PathLike | None) -> list[Path]:
    out: list[Path] = []
    for r in base_roots(entry, data_dir):
        for sub in ("",) + entry.subdirs:
            p = r / sub if sub else r
            if p not in out:
                out.append(p)
    return out


def get_dataset_entry(name: str) -> DatasetEntry:
    try:
        return _DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}") from None


def split_train_val(n: int, seed: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train/validation index split (the papers hold out 10 % of the training set)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = images.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    download: bool = False,
    image_size=None,
    options: "ImageOptions | dict | None" = None,
    workers: int | None = None,
) -> DataBundle:
    """Find ``name`` on disk and return deterministic train / validation / test splits.

    ``options`` (an :class:`~edgeprune.data.options.ImageOptions` or its dict, e.g. a checkpoint's
    ``meta["data_options"]``) sets image size, channels, resize policy and normalization; ``image_size`` is a
    shortcut for its size. ``workers``: decoding processes for image folders (default: automatic).
    """
    from .options import ImageOptions

    opts = options if isinstance(options, ImageOptions) else ImageOptions.from_dict(options)
    if image_size is not None:
        opts = dataclasses.replace(opts, image_size=image_size)
    if name.startswith("imagefolder:"):
        from .imagefolder import load_imagefolder

        return load_imagefolder(name.split(":", 1)[1], seed=seed, val_fraction=val_fraction, options=opts,
                                workers=workers)
    entry = get_dataset_entry(name)
    roots = candidate_roots(entry, data_dir)
    folder = next((r for r in roots if r.is_dir() and entry.locate(r)), None)
    if folder is None and download:
        if entry.download is None:
            raise DatasetError(f"{name} cannot be downloaded by edgeprune; {entry.how_to_get}")
        target = Path(data_dir) if data_dir else user_cache_dir()
        try:
            entry.download(target)
        except Exception as exc:  # network errors come in many types
            raise DatasetError(f"downloading {name} into {target} failed ({exc}); {entry.how_to_get}") from None
        folder = next((r for r in candidate_roots(entry, target) if r.is_dir() and entry.locate(r)), None)
    if folder is None:
        roots = [str(r) for r in base_roots(entry, data_dir)]
        looked = ", ".join(roots)
        subs = " ".join(f"{s}/" for s in entry.subdirs if s)
        where = "in it" if len(roots) == 1 else "in each"
        inside = f" and the {subs} folder{'s' if len(entry.subdirs) > 1 else ''} {where}" if subs else ""
        raise DatasetError(
            f"{name} not found (looked in {looked}{inside}); {entry.how_to_get}, "
            "pass --data-dir, or allow --download"
        )
    xtr, ytr, xte, yte = entry.read(folder)
    mean, std, shape, recorded = entry.mean, entry.std, entry.input_shape, None
    if opts != ImageOptions():
        xtr, xte, mean, std, shape, recorded = _apply_options(entry, opts, xtr, xte)
    train_all = TensorSplit(normalize(xtr, mean, std), ytr.long())
    test = TensorSplit(normalize(xte, mean, std), yte.long())
    tr_idx, va_idx = split_train_val(len(train_all), seed, val_fraction)
    return DataBundle(
        name=name,
        train=train_all.subset(tr_idx),
        val=train_all.subset(va_idx),
        test=test,
        input_shape=shape,
        num_classes=entry.num_classes,
        root=str(folder),
        augment=entry.augment,
        options=recorded,
    )


def _apply_options(entry: DatasetEntry, opts, xtr: torch.Tensor, xte: torch.Tensor):
    """A built-in dataset resized / re-channelled / re-normalized as asked (uint8 in, uint8 out)."""
    import logging

    from .options import ImageOptions, fit_channels, fit_tensor

    native_c, native_hw = entry.input_shape[0], tuple(entry.input_shape[1:])
    channels = opts.channels or native_c
    size = tuple(opts.image_size) if opts.image_size else native_hw
    xtr = fit_tensor(fit_channels(xtr, channels), size, opts.resize)
    xte = fit_tensor(fit_channels(xte, channels), size, opts.resize)
    given = opts.stats_for(channels)
    if given is not None:
        mean, std = given
    elif channels == native_c:
        mean, std = entry.mean, entry.std
    elif channels == 3:  # gray replicated: the same statistics on each channel
        mean, std = entry.mean * 3, entry.std * 3
    else:  # RGB → luma: the published statistics no longer apply
        from .options import channel_stats

        mean, std = channel_stats(xtr)
    logging.getLogger(__name__).info("%s as %d×%d×%d (resize policy %s), normalization mean %s std %s", entry.name,
                                     channels, size[0], size[1], opts.resize, list(mean), list(std))
    recorded = ImageOptions(image_size=size, channels=channels, resize=opts.resize, mean=mean, std=std)
    return xtr, xte, tuple(mean), tuple(std), (channels, *size), recorded.to_dict()
