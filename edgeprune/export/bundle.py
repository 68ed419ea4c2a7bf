"""Export one model to every requested format, validate all artifacts together, then publish them.

All-or-nothing: artifacts are built in a hidden temporary folder inside ``out_dir``; only when every artifact
matches the PyTorch model are they renamed to their final names (``<stem>.onnx``, ``<stem>.7z``, ``<stem>.ptl``,
``<stem>.ort``). On any failure the temporary folder is removed and nothing is left under a final name.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .._progress import make_progress
from ..errors import ConfigError, ExportError
from .onnx_export import build_onnx, check_opset
from .ort_format import build_ort
from .sizes import compression_ratio, param_counts, write_7z
from .torchscript import build_ptl
from .validate import RTOL, _first_line, compare, example_input, raise_mismatches, validation_inputs

log = logging.getLogger(__name__)

FORMATS = ("onnx", "ptl", "ort")


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"onnx,ptl"`` or a sequence → a validated tuple in canonical order."""
    items = [f.strip().lower().lstrip(".") for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ConfigError(f"unknown export format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in items)


def export_all(
    model: nn.Module,
    out_dir: str | os.PathLike,
    stem: str,
    input_shape: Sequence[int],
    formats: Sequence[str] = FORMATS,
    real_batch: torch.Tensor | None = None,
    *,
    opset: int = 18,
    dynamic_batch: bool = False,
    slim: bool = True,
    optimize: bool = True,
    sevenzip: bool = True,
    baseline_params: int | None = None,
) -> dict:
    """Export ``model`` as ``out_dir/<stem>.{onnx,7z,ptl,ort}``, validated on random and (if given) real inputs.

    ``real_batch``: real samples (N×input_shape) checked besides random ones. ``baseline_params``: parameters of the
    unpruned model, to report SeReNe's compression ratio. Returns::

        {"stem", "input_shape", "formats", "dynamic_batch", "tolerance_rtol",
         "artifacts": {"onnx": {"path", "bytes", "opset", "slim", "nodes", "ops", "batchnorm_nodes", "max_abs_diff"},
                       "7z": {"path", "bytes"}, "ptl": {..., "optimize_for_mobile"}, "ort": {...}},
         "onnx_bytes", "onnx_7z_bytes", "ptl_bytes", "ort_bytes",   # those exported
         "max_abs_diff": {"onnx": ..., "ptl": ..., "ort": ...},
         "params_total", "params_nonzero", "macs", "compression_ratio" (with baseline_params)}

    Raises ExportError listing every failure or mismatch; nothing is left under a final name then.
    """
    formats = parse_formats(formats)
    check_opset(opset)
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        raise ConfigError(f"invalid artifact name {stem!r}: give a plain file stem like 'model'")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s <= 0 for s in input_shape):
        raise ConfigError(f"invalid input shape {input_shape}; give one sample's shape, e.g. 1,28,28")
    try:
        net = copy.deepcopy(model).cpu().eval()
    except Exception as exc:
        raise ExportError(f"cannot copy the model for export ({_first_line(exc)})") from None
    example = example_input(input_shape, 1, seed=0)
    try:
        with torch.no_grad():
            net(example)
    except Exception as exc:
        raise ExportError(f"the model does not run on input of shape {(1, *input_shape)} "
                          f"({_first_line(exc)}); pass the right --input-shape") from None
    # Batches of 2: a fixed-batch artifact is fed sample by sample, a dynamic one the whole batch.
    inputs = validation_inputs(input_shape, real_batch, batch=2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.export-", dir=out_dir))
    steps = _steps(formats)
    try:
        with make_progress() as progress:
            task = progress.add_task(f"export {stem}", total=len(steps) + 1 + int(sevenzip and "onnx" in formats),
                                     info="")
            built, info, failures = _build(net, example, tmp, stem, steps, progress, task, opset=opset,
                                           dynamic_batch=dynamic_batch, slim=slim, optimize=optimize)
            progress.update(task, info="validate")
            by_name, mismatches = compare(net, {built[f].name: built[f] for f in formats if f in built}, inputs)
            diffs = {f: by_name[built[f].name] for f in formats if f in built}
            if failures:
                found = f"; also {len(mismatches)} mismatch(es): " + "; ".join(
                    m.describe() for m in mismatches[:4]) if mismatches else ""
                raise ExportError("; ".join(failures) + found)
            raise_mismatches(mismatches)
            progress.advance(task)
            if sevenzip and "onnx" in formats:
                progress.update(task, info="7z (LZMA)")
                built["7z"] = tmp / f"{stem}.7z"
                write_7z(built["onnx"], built["7z"], arcname=f"{stem}.onnx")
                progress.advance(task)
        final = {}
        for key in ("onnx", "7z", "ptl", "ort"):
            if key not in built or (key not in formats and key != "7z"):
                continue
            src = built[key]
            dst = out_dir / src.name
            os.replace(src, dst)
            final[key] = dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    artifacts = {}
    for key, dst in final.items():
        entry = {"path": str(dst), "bytes": dst.stat().st_size, **info.get(key, {})}
        if key in diffs:
            entry["max_abs_diff"] = diffs[key]
        artifacts[key] = entry
    total, nonzero = param_counts(net)
    result = {
        "stem": stem,
        "input_shape": list(input_shape),
        "formats": list(formats),
        "dynamic_batch": dynamic_batch,
        "tolerance_rtol": RTOL,
        "validated_on": list(inputs),
        "artifacts": artifacts,
        "max_abs_diff": diffs,
        "params_total": total,
        "params_nonzero": nonzero,
        "macs": _macs(net, input_shape),
    }
    for key, name in (("onnx", "onnx_bytes"), ("7z", "onnx_7z_bytes"), ("ptl", "ptl_bytes"), ("ort", "ort_bytes")):
        if key in artifacts:
            result[name] = artifacts[key]["bytes"]
    if baseline_params:
        result["compression_ratio"] = compression_ratio(baseline_params, nonzero)
    log.info("exported %s: %s", stem, ", ".join(f"{k} {v['bytes']:,} B" for k, v in artifacts.items()))
    return result


def _steps(formats) -> list[str]:
    steps = [f for f in FORMATS if f in formats]
    if "ort" in steps and "onnx" not in steps:
        steps.insert(0, "onnx")  # .ort is converted from the .onnx (kept only when asked for)
    return steps


def _build(net, example, tmp: Path, stem: str, steps, progress, task, *, opset, dynamic_batch, slim, optimize):
    built: dict[str, Path] = {}
    info: dict[str, dict] = {}
    failures: list[str] = []
    metadata = {"edgeprune_arch": getattr(net, "edgeprune_arch", None) or {}, "input_shape": list(example.shape[1:])}
    for fmt in steps:
        progress.update(task, info=fmt)
        path = tmp / f"{stem}.{fmt}"
        # Keep going after a failed format so the one error names every format that cannot be exported.
        try:
            if fmt == "onnx":
                info["onnx"] = build_onnx(net, example, path, opset=opset, dynamic_batch=dynamic_batch, slim=slim,
                                          metadata=metadata)
            elif fmt == "ptl":
                info["ptl"] = build_ptl(net, example, path, optimize=optimize)
            elif "onnx" in built:
                info["ort"] = build_ort(built["onnx"], path)
            else:
                failures.append("ORT format skipped: it is converted from the ONNX file")
                continue
            built[fmt] = path
        except ExportError as exc:
            failures.append(str(exc))
        finally:
            progress.advance(task)
    return built, info, failures


def _macs(net: nn.Module, input_shape) -> int | None:
    from ..summary import summarize

    try:
        return summarize(net, tuple(input_shape)).macs
    except Exception as exc:  # MAC counting is informative only
        log.debug("MAC count failed: %s", exc)
        return None
