"""How images become the model's input: size, channels, resize policy and normalization statistics.

The same options apply to image folders and to the built-in datasets (e.g. Fashion-MNIST padded to 32×32 with 3
channels, so the CIFAR networks of the paper zoo run on it). They are recorded in a checkpoint's
``meta["data_options"]`` so every later stage (compress, surgery, export) feeds the model exactly what it was
trained on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DatasetError

RESIZE_POLICIES = ("crop", "stretch", "pad")
"""crop: scale the shorter side to the target, then center-crop (torchvision's Resize + CenterCrop); stretch: scale
both sides to the target (aspect ratio changes); pad: center the image on a zero (black) canvas, scaling it down
first only when it is larger than the target."""


@dataclasses.dataclass
class ImageOptions:
    image_size: tuple[int, int] | None = None
    """(height, width); None: the data's own size (image folders: the size all images share, else the most common)."""
    channels: int | None = None
    """1 or 3; None: the data's own (image folders: 1 when every image is grayscale, else 3)."""
    resize: str = "crop"
    mean: tuple[float, ...] | None = None
    """Per-channel statistics of pixels in [0, 1]; None: computed on the training split (image folders) or the
    dataset's published ones (built-in datasets)."""
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None:
            self.image_size = parse_size(self.image_size)
        if self.channels is not None and self.channels not in (1, 3):
            raise DatasetError(f"--channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.resize not in RESIZE_POLICIES:
            raise DatasetError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        self.mean = _floats(self.mean, "--mean")
        self.std = _floats(self.std, "--std")
        if (self.mean is None) != (self.std is None):
            raise DatasetError("give --mean and --std together (or neither, to compute them on the training split)")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise DatasetError(f"--std values must be positive, got {list(self.std)}")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise DatasetError(f"--mean has {len(self.mean)} values but --std has {len(self.std)}; "
                               "give one per channel")

    @classmethod
    def from_dict(cls, data: dict | None) -> "ImageOptions":
        data = dict(data or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size) if self.image_size else None, "channels": self.channels,
                "resize": self.resize, "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}

    def stats_for(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Given statistics, broadcast to ``channels`` (one value for all channels is allowed)."""
        if self.mean is None:
            return None
        if len(self.mean) == channels:
            return self.mean, self.std
        if len(self.mean) == 1:
            return self.mean * channels, self.std * channels
        raise DatasetError(f"--mean/--std give {len(self.mean)} values but the images have {channels} channels; "
                           + ("give 1 value each" if channels == 1 else f"give 1 or {channels} values each"))


def parse_size(value) -> tuple[int, int]:
    """``28``, ``"28"``, ``"32x48"`` (height x width) or a pair → (height, width)."""
    try:
        if isinstance(value, str):
            parts = [int(v) for v in value.lower().replace("×", "x").split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(v) for v in value]
    except (TypeError, ValueError):
        raise DatasetError(f"--image-size must be N or HxW (e.g. 32 or 32x48), got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p < 1 for p in parts):
        raise DatasetError(f"--image-size must be N or HxW with positive sizes, got {value!r}")
    return int(parts[0]), int(parts[1])


def _floats(value, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise DatasetError(f"{option} must be comma-separated numbers like 0.5 or 0.485,0.456,0.406, "
                           f"got {value!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise DatasetError(f"{option} must be finite numbers, got {value!r}")
    return vals


def fit_tensor(images: torch.Tensor, size: tuple[int, int], policy: str) -> torch.Tensor:
    """Resize a uint8 NCHW batch to ``size`` under ``policy`` (see :data:`RESIZE_POLICIES`); uint8 out."""
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return images
    x = images.to(torch.float32)
    if policy == "stretch":
        x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    elif policy == "crop":
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top: top + th, left: left + tw]
    else:  # pad
        if h > th or w > tw:
            scale = min(th / h, tw / w)
            nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            h, w = nh, nw
        top, left = (th - h) // 2, (tw - w) // 2
        x = F.pad(x, (left, tw - w - left, top, th - h - top))
    return x.round_().clamp_(0, 255).to(torch.uint8)


def fit_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale → RGB by repetition; RGB → grayscale by ITU-R 601 luma (PIL's "L" conversion)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.to(torch.float32) * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot turn {c}-channel images into {channels} channels")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 NCHW images scaled to [0, 1] (float64 sums, in chunks)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for start in range(0, images.shape[0], chunk):
        x = images[start: start + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    if n == 0:
        raise DatasetError("no training images to compute normalization statistics from")
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # a constant channel: leave its scale alone
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
