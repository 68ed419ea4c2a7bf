"""TorchScript lite-interpreter export (.ptl), the format PyTorch Android's ``LiteModuleLoader`` reads.

The model is traced (``torch.jit.trace``) on a deterministic example, passed through
``torch.utils.mobile_optimizer.optimize_for_mobile`` when the installed PyTorch can (it needs an XNNPACK build; the
PyPI CPU wheels lack it, so the step is skipped and the reason recorded), then saved with
``_save_for_lite_interpreter``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError, ExportError
from .onnx_export import quiet_export
from .validate import _first_line

log = logging.getLogger(__name__)


def build_ptl(model: nn.Module, example: torch.Tensor, path: Path, *, optimize: bool = True) -> dict:
    """Trace and save ``model`` to ``path`` (no validation); return ``{"optimize_for_mobile": "applied" | "skipped:
    <reason>" | "off"}``."""
    try:
        with quiet_export(), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
    except Exception as exc:
        raise ExportError(f"TorchScript tracing failed: {_first_line(exc)}; make forward() take and return "
                          "tensors") from None
    note = "off"
    if optimize:
        try:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            with quiet_export():
                traced = optimize_for_mobile(traced)
            note = "applied"
        except Exception as exc:  # RuntimeError "XNNPACK is not enabled" on builds without XNNPACK
            reason = _first_line(exc)
            if "XNNPACK" in reason:
                reason = "this PyTorch build has no XNNPACK"
            note = f"skipped: {reason}"
            log.info("optimize_for_mobile %s", note)
    try:
        with quiet_export():
            traced._save_for_lite_interpreter(str(path))
    except Exception as exc:
        raise ExportError(f"saving for the lite interpreter failed: {_first_line(exc)}") from None
    return {"optimize_for_mobile": note}


def export_ptl(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], *, real_batch: torch.Tensor | None = None,
) -> dict:
    """Export to a validated .ptl file, written atomically. Returns ``{"path", "bytes", "optimize_for_mobile",
    "max_abs_diff"}``."""
    from .bundle import export_all

    path = Path(path)
    if path.suffix.lower() != ".ptl":
        raise ConfigError(f"{path}: a lite-interpreter file name must end in .ptl")
    result = export_all(model, path.parent, path.stem, input_shape, formats=("ptl",), real_batch=real_batch)
    return result["artifacts"]["ptl"]
