"""``imagefolder:PATH``: a user's own images, one sub-folder per class (torchvision's ImageFolder layout).

Splits: ``PATH/train`` + ``PATH/test`` (10 % of train held out for validation), ``PATH/train`` + ``PATH/val`` +
``PATH/test`` (all three as given), ``PATH/train`` + ``PATH/val`` (val is the test split; 10 % of train for
validation), or PATH itself (10 % held out, used for both validation and test).

The images are taken as they are: channels and size are detected from the files (1 channel when every image is
grayscale, else 3; the size all images share, else the most common one), unless ``--channels`` / ``--image-size``
say otherwise; images of another size are fitted under the resize policy (:data:`options.RESIZE_POLICIES`).
Normalization statistics are computed on the training split (not validation or test) unless given. Images are
decoded once, by worker processes with a progress bar, into memory.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ._registry import DataBundle, TensorSplit, split_train_val
from .options import ImageOptions, channel_stats

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
POOL_THRESHOLD = 1000
"""Below this many files, decoding in the main process is faster than starting workers."""


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file, class index)]) of a class-per-sub-folder tree; ``classes`` fixes the label order."""
    if not folder.is_dir():
        raise DatasetError(f"imagefolder: {folder} is not a folder; give a folder with one sub-folder per class")
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS][:1]
        hint = f" (found images such as {loose[0]} directly in it)" if loose else ""
        raise DatasetError(f"imagefolder: {folder} has no class sub-folders{hint}; put each class's images in "
                           f"{folder}/CLASS_NAME/")
    if classes is None:
        classes = subdirs
    else:
        extra = [d for d in subdirs if d not in classes]
        if extra:
            raise DatasetError(f"imagefolder: {folder} has class {extra[0]!r} that the training folder lacks; "
                               "train and test folders must use the same class names")
    samples: list[tuple[str, int]] = []
    for name in subdirs:
        files = sorted(str(p) for p in (folder / name).rglob("*")
                       if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not files:
            raise DatasetError(f"imagefolder: class folder {folder / name} has no images "
                               f"({', '.join(IMG_EXTENSIONS)}); remove it or add its images")
        samples += [(f, classes.index(name)) for f in files]
    return classes, samples


def _pool_map(fn, jobs: list, workers: int, description: str) -> list:
    from .._progress import make_progress

    out = []
    with make_progress() as progress:
        task = progress.add_task(description, total=len(jobs), info="")
        if workers <= 0:
            for job in jobs:
                out.append(fn(job))
                progress.advance(task)
            return out
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
        chunk = max(1, min(256, len(jobs) // (workers * 8) or 1))
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for result in pool.map(fn, jobs, chunksize=chunk):
                out.append(result)
                progress.advance(task)
    return out


def _workers(requested: int | None, n: int) -> int:
    if requested is not None:
        if requested < 0:
            raise DatasetError(f"--workers must be >= 0, got {requested}")
        return requested
    return 0 if n < POOL_THRESHOLD else min(8, os.cpu_count() or 1)


def _detect(headers: list, files: list[str], opts: ImageOptions) -> tuple[int, tuple[int, int], str]:
    """Channels and size for the whole dataset, and a sentence saying what was detected."""
    from .._imagedecode import GRAY_MODES

    for f, h in zip(files, headers):
        if isinstance(h, str):
            raise DatasetError(f"imagefolder: cannot read {f} ({h[:160]}); remove or replace the file")
    modes = collections.Counter(h[0] for h in headers)
    sizes = collections.Counter((h[2], h[1]) for h in headers)  # (height, width)
    gray = all(m in GRAY_MODES for m in modes)
    if opts.channels is not None:
        channels, said_c = opts.channels, f"{opts.channels} channel{'s' if opts.channels > 1 else ''} (given)"
    else:
        channels = 1 if gray else 3
        kinds = ", ".join(f"{m} ×{n}" for m, n in modes.most_common(3))
        said_c = f"{channels} channel{'s' if channels > 1 else ''} detected ({'all grayscale' if gray else kinds})"
    common, count = sizes.most_common(1)[0]
    if opts.image_size is not None:
        size = tuple(opts.image_size)
        said_s = f"{size[0]}×{size[1]} (given, resize policy {opts.resize})"
    elif len(sizes) == 1:
        size = common
        said_s = f"{size[0]}×{size[1]} detected (every image), kept as is"
    else:
        size = common
        small = min(sizes, key=lambda s: s[0] * s[1])
        large = max(sizes, key=lambda s: s[0] * s[1])
        said_s = (f"{len(sizes)} sizes from {small[0]}×{small[1]} to {large[0]}×{large[1]}: the most common, "
                  f"{size[0]}×{size[1]} ({count} of {len(headers)} images), kept; the others fitted with resize "
                  f"policy {opts.resize} (set --image-size / --resize to choose)")
    return channels, (int(size[0]), int(size[1])), f"{said_c}; size {said_s}"


def _check_memory(n: int, channels: int, size: tuple[int, int]) -> None:
    need = n * channels * size[0] * size[1] * 5  # uint8 decode + float32 copy
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return
    if need > 0.8 * total:
        raise DatasetError(f"imagefolder: {n:,} images of {channels}×{size[0]}×{size[1]} need about "
                           f"{need / 2**30:.1f} GiB in memory, this machine has {total / 2**30:.1f} GiB; "
                           "choose a smaller --image-size or a subset of the images")


def _decode_all(samples, channels, size, policy, workers, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .._imagedecode import decode

    jobs = [(f, channels, size, policy) for f, _ in samples]
    arrays = _pool_map(decode, jobs, workers, f"decoding {label}")
    for (f, _), a in zip(samples, arrays):
        if isinstance(a, str):
            raise DatasetError(f"imagefolder: cannot decode {f} ({a[:160]}); remove or replace the file")
    x = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, channels, *size), dtype=torch.uint8)
    y = torch.tensor([c for _, c in samples], dtype=torch.long)
    return x, y


def load_imagefolder(path: str, seed: int = 0, val_fraction: float = 0.1, options: ImageOptions | None = None,
                     workers: int | None = None) -> DataBundle:
    from .._imagedecode import header
    from ._registry import normalize

    opts = options or ImageOptions()
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} is not a folder; give a folder with one sub-folder per class")
    if (root / "train").is_dir():
        classes, train_s = _scan(root / "train")
        val_dir = root / "val" if (root / "val").is_dir() else None
        test_dir = root / "test" if (root / "test").is_dir() else None
        val_s = _scan(val_dir, classes)[1] if val_dir is not None and test_dir is not None else None
        test_s = _scan(test_dir or val_dir, classes)[1] if (test_dir or val_dir) is not None else None
    else:
        classes, train_s = _scan(root)
        val_s = test_s = None
    if len(classes) < 2:
        raise DatasetError(f"imagefolder: {root} has {len(classes)} class folder; a classifier needs at least 2")
    everything = train_s + (val_s or []) + (test_s or [])
    n_workers = _workers(workers, len(everything))
    headers = _pool_map(header, [f for f, _ in everything], n_workers, "reading image headers")
    channels, size, detected = _detect(headers, [f for f, _ in everything], opts)
    _check_memory(len(everything), channels, size)

    xtr, ytr = _decode_all(train_s, channels, size, opts.resize, n_workers, "train")
    if val_s is not None:
        tr_idx, va_idx = torch.arange(len(train_s)), None
    else:
        tr_idx, va_idx = split_train_val(len(train_s), seed, val_fraction)
    given = opts.stats_for(channels)
    if given is not None:
        mean, std = given
        said_n = "given"
    else:
        mean, std = channel_stats(xtr[tr_idx])
        said_n = "computed on the training split"
    train_all = TensorSplit(normalize(xtr, mean, std), ytr)
    train = train_all.subset(tr_idx)
    if val_s is not None:
        xv, yv = _decode_all(val_s, channels, size, opts.resize, n_workers, "val")
        val = TensorSplit(normalize(xv, mean, std), yv)
    else:
        val = train_all.subset(va_idx)
    if test_s is not None:
        xt, yt = _decode_all(test_s, channels, size, opts.resize, n_workers, "test")
        test = TensorSplit(normalize(xt, mean, std), yt)
    else:
        test = val
    log.info("imagefolder %s: %d classes, %d train / %d val / %d test images; %s; normalization mean %s std %s (%s)",
             root, len(classes), len(train), len(val), len(test), detected,
             [round(m, 4) for m in mean], [round(s, 4) for s in std], said_n)
    recorded = ImageOptions(image_size=size, channels=channels, resize=opts.resize, mean=mean, std=std)
    return DataBundle(
        name=f"imagefolder:{root}", train=train, val=val, test=test, input_shape=(channels, *size),
        num_classes=len(classes), root=str(root), options=recorded.to_dict(), classes=list(classes),
        detected=f"{detected}; normalization {said_n}",
    )
