"""ONNX Runtime's mobile format (.ort), converted with onnxruntime's own tool (``convert_onnx_models_to_ort``).

The conversion runs ORT's graph optimizations ahead of time ("Fixed" style, level "all") for an ARM target (the
x86-only NCHWc layout transform is excluded, so the file runs on phones) and serializes the result as a FlatBuffer the
ORT Android package loads directly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ExportError
from .validate import _first_line

log = logging.getLogger(__name__)

TARGET_PLATFORM = "arm"


def build_ort(onnx_path: Path, path: Path) -> dict:
    """Convert ``onnx_path`` into ``path`` (.ort) without validating it; return facts about the conversion."""
    OptimizationStyle, convert_onnx_models_to_ort = _converter()
    with tempfile.TemporaryDirectory(prefix=".ort-", dir=path.parent) as tmp:
        tmp_dir = Path(tmp)
        src = tmp_dir / "model.onnx"
        shutil.copyfile(onnx_path, src)
        out_dir = tmp_dir / "out"
        try:
            # The tool reports progress with print(); keep it off the user's stdout.
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(
                    src, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed],
                    target_platform=TARGET_PLATFORM,
                )
        except Exception as exc:
            raise ExportError(f"ORT conversion of {onnx_path.name} failed: {_first_line(exc)}") from None
        converted = out_dir / "model.ort"
        if not converted.is_file():
            raise ExportError(f"ORT conversion of {onnx_path.name} produced no .ort file")
        os.replace(converted, path)
    return {"optimization_style": "Fixed", "target_platform": TARGET_PLATFORM}


def _converter():
    """Import onnxruntime's converter without keeping the root log handler its logger module installs
    (``logging.basicConfig``), which would print every edgeprune log line twice."""
    root = logging.getLogger()
    before = list(root.handlers)
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    return OptimizationStyle, convert_onnx_models_to_ort


def export_ort(onnx_path: str | os.PathLike, path: str | os.PathLike | None = None) -> dict:
    """Convert an existing .onnx file to .ort (default: same name, ``.ort``), atomically, validated against the
    .onnx file it came from. Returns ``{"path", "bytes", "max_abs_diff", ...}``."""
    import numpy as np

    from .. import _io
    from .validate import example_input, onnxruntime_runner, raise_mismatches, tolerance, Mismatch

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: no such ONNX file")
    path = Path(path) if path else onnx_path.with_suffix(".ort")
    with _io.atomic_path(path, suffix=".ort") as tmp:
        info = build_ort(onnx_path, tmp)
        ref = onnxruntime_runner(onnx_path)
        shape = _input_shape(onnx_path)
        got_run = onnxruntime_runner(tmp)
        worst, mismatches = 0.0, []
        for i in range(2):
            x = example_input(shape[1:], shape[0], seed=1000 + i).numpy()
            for k, (a, b) in enumerate(zip(got_run(x), ref(x))):
                d = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
                worst = max(worst, d)
                if not d <= tolerance(b):
                    mismatches.append(Mismatch(path.name, f"random#{i + 1}", "×".join(map(str, b.shape)), d,
                                               tolerance(b)))
        raise_mismatches(mismatches, hint="the ORT optimizer changed the model's function; export with --format onnx")
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": worst, **info}


def _input_shape(onnx_path: Path) -> tuple[int, ...]:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
