"""Stored sizes as SeReNe reports them: the .onnx file and its LZMA-compressed .7z archive; parameter counts.

SeReNe (Sec. V, the ".onnx" and ".7z" columns) stores each network in ONNX and compresses the file losslessly with
LZMA; pruned networks whose zeros form whole rows and columns compress far better. The archive written here is a
real 7z archive (py7zr, LZMA2 at preset 5, the level of a plain ``7z a``) holding the .onnx under its own name, so the system's
``7z x`` extracts it back byte for byte.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch.nn as nn

from .. import _io
from ..errors import ExportError

LZMA_PRESET = 5


def write_7z(path: str | os.PathLike, archive: str | os.PathLike, arcname: str | None = None) -> int:
    """Write ``archive`` (.7z, LZMA2 preset 5) holding ``path``; atomic; return the archive's size in bytes."""
    import py7zr

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file to compress")
    filters = [{"id": py7zr.FILTER_LZMA2, "preset": LZMA_PRESET}]
    with _io.atomic_path(archive, suffix=".7z") as tmp:
        tmp.unlink()  # py7zr refuses to append to the empty placeholder file
        with py7zr.SevenZipFile(tmp, "w", filters=filters) as zf:
            zf.write(path, arcname or path.name)
    return Path(archive).stat().st_size


def lzma_7z_bytes(path: str | os.PathLike) -> int:
    """Size in bytes of the .7z archive of ``path`` (built in a temporary folder and discarded)."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-7z-") as tmp:
        return write_7z(path, Path(tmp) / (Path(path).name + ".7z"))


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) parameters — the numerator and denominator of SeReNe's compression ratio."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = int(sum(int(p.detach().ne(0).sum()) for p in model.parameters()))
    return total, nonzero


def compression_ratio(baseline_params: int, pruned_nonzero: int) -> float:
    """SeReNe's compression ratio: parameters of the original network ÷ parameters remaining after pruning."""
    if pruned_nonzero <= 0:
        return float("inf")
    return baseline_params / pruned_nonzero
