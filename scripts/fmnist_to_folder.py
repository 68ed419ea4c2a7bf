"""Write Fashion-MNIST (or a per-class subset of it) as a folder of 28×28 grayscale PNGs, one sub-folder per class,
``train/`` and ``test/`` — the layout ``imagefolder:PATH`` reads. A real data set in the shape a user brings.

    .venv/bin/python scripts/fmnist_to_folder.py runs/fmnist-png --per-class 1000 --test-per-class 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=1000, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    from edgeprune.data import get_dataset_entry
    from edgeprune.data._registry import candidate_roots

    entry = get_dataset_entry("fashion-mnist")
    folder = next(r for r in candidate_roots(entry, args.data_dir) if r.is_dir() and entry.locate(r))
    xtr, ytr, xte, yte = entry.read(folder)
    for split, x, y, k in (("train", xtr, ytr, args.per_class), ("test", xte, yte, args.test_per_class)):
        for c, name in enumerate(CLASSES):
            d = args.out / split / name
            d.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(y.numpy() == c)[:k]
            for i in idx:
                Image.fromarray(x[i, 0].numpy(), "L").save(d / f"{i:05d}.png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
