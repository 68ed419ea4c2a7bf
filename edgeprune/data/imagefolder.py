"""``imagefolder:PATH``: a user's own images, one sub-folder per class (torchvision's ImageFolder layout).

If PATH has ``train/`` and ``test/`` (or ``val/``) sub-folders they are used as the splits; otherwise 10 % of the
images are held out for validation and the test split is the validation split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DatasetError
from ._registry import DataBundle, split_train_val


def load_imagefolder(path: str, seed: int = 0, val_fraction: float = 0.1, image_size: int | None = None) -> DataBundle:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} is not a folder; give a folder with one sub-folder per class")
    size = image_size or 224
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def folder(p: Path):
        try:
            return tvd.ImageFolder(str(p), transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DatasetError(f"imagefolder: {p}: {exc}") from None

    if (root / "train").is_dir():
        full = folder(root / "train")
        test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        tr_idx, va_idx = split_train_val(len(full), seed, val_fraction)
        train = torch.utils.data.Subset(full, tr_idx.tolist())
        val = torch.utils.data.Subset(full, va_idx.tolist())
        test = folder(test_dir) if test_dir is not None else val
    else:
        full = folder(root)
        tr_idx, va_idx = split_train_val(len(full), seed, val_fraction)
        train = torch.utils.data.Subset(full, tr_idx.tolist())
        val = test = torch.utils.data.Subset(full, va_idx.tolist())
    return DataBundle(
        name=f"imagefolder:{root}", train=train, val=val, test=test, input_shape=(3, size, size),
        num_classes=len(full.classes), root=str(root),
    )
