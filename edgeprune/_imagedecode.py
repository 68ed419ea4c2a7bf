"""Image decoding for worker processes: PIL and numpy only, so a worker starts without importing torch."""

from __future__ import annotations

import numpy as np

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def header(path: str) -> tuple[str, int, int] | str:
    """(mode, width, height) read from the file header, or an error message."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode, int(img.size[0]), int(img.size[1])
    except Exception as exc:  # PIL raises many types for damaged files
        return f"{type(exc).__name__}: {exc}"


def _to_mode(img, channels: int):
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels over black, as the pad policy's canvas.
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, img)
    return img.convert("L" if channels == 1 else "RGB")


def _fit(img, size: tuple[int, int], policy: str):
    from PIL import Image

    th, tw = size
    w, h = img.size
    if (h, w) == (th, tw):
        return img
    bilinear = Image.Resampling.BILINEAR
    if policy == "stretch":
        return img.resize((tw, th), bilinear)
    if policy == "crop":
        scale = max(th / h, tw / w)
        nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), bilinear)
        left, top = (nw - tw) // 2, (nh - th) // 2
        return img.crop((left, top, left + tw, top + th))
    if h > th or w > tw:  # pad: shrink to fit first
        scale = min(th / h, tw / w)
        w, h = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
        img = img.resize((w, h), bilinear)
    canvas = Image.new(img.mode, (tw, th), 0)
    canvas.paste(img, ((tw - w) // 2, (th - h) // 2))
    return canvas


def decode(job: tuple[str, int, tuple[int, int], str]) -> np.ndarray | str:
    """One image as a uint8 (C, H, W) array of the requested channels, size and resize policy, or an error message."""
    from PIL import Image

    path, channels, size, policy = job
    try:
        with Image.open(path) as img:
            img.load()
            out = _fit(_to_mode(img, channels), size, policy)
            arr = np.asarray(out, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for damaged files
        return f"{type(exc).__name__}: {exc}"
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
