"""ONNX export: one self-contained file, BatchNorm and constants folded, optionally slimmed, checked.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``): it folds eval-mode BatchNorm into the preceding
convolution, folds constants, and the file it writes needs nothing but onnx / onnxruntime to load (no onnxscript
functions). onnxslim then simplifies the graph; the slimmed graph is kept only when onnxruntime gives the same outputs
for it as for the unslimmed one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError, ExportError
from .validate import _first_line, example_input, onnxruntime_runner, tolerance

log = logging.getLogger(__name__)

MIN_OPSET = 17
SLIM_RTOL = 1e-6
"""Slimming must not move any output by more than this fraction of the output scale ("identical" up to float
rounding of folded constants)."""


def check_opset(opset: int) -> None:
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"ONNX opset must be an integer ≥ {MIN_OPSET} (got {opset!r}); e.g. --opset 18")


def output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


@contextlib.contextmanager
def quiet_export():
    """Silence the exporters' deprecation notices and their dumps to stdout/stderr; log tracer warnings."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            log.warning("tracing: %s", str(w.message).splitlines()[0])


@contextlib.contextmanager
def captured_native_output():
    """Capture what native code writes to file descriptors 1 and 2 (the legacy exporter dumps whole graphs there on
    failure) and log it at debug level instead."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    except (OSError, ValueError, AttributeError):  # no real descriptors (embedded interpreter): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            for fd, _ in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("exporter output:\n%s", text[:20000])


def build_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, *, opset: int = 18, dynamic_batch: bool = False,
    slim: bool = True, metadata: dict | None = None,
) -> dict:
    """Export ``model`` (eval mode, CPU) to ``path`` without validating it against PyTorch; return facts about it.

    Raises ExportError for an operator the exporter cannot convert or a graph ``onnx.checker`` rejects.
    """
    import onnx

    check_opset(opset)
    with torch.no_grad():
        n_out = len(_flat(model(example)))
    names = output_names(n_out)
    dynamic_axes = {n: {0: "batch"} for n in ["input", *names]} if dynamic_batch else None
    try:
        with quiet_export(), captured_native_output():
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL, input_names=["input"], output_names=names,
                dynamic_axes=dynamic_axes, export_params=True,
            )
    except Exception as exc:  # the exporter raises many types (UnsupportedOperatorError, RuntimeError, SymbolicValueError)
        raise ExportError(f"ONNX export failed: {_first_line(exc)}; replace that operation in the model or "
                          f"try another --opset (≥ {MIN_OPSET})") from None
    proto = onnx.load(str(path))
    info: dict = {"opset": opset, "dynamic_batch": dynamic_batch, "slim": "off"}
    if slim:
        proto, info["slim"] = _slim(proto, example, path)
    if metadata:
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value, default=str)
    _save_self_contained(proto, path)
    _check(path)
    ops = [n.op_type for n in proto.graph.node]
    info.update(nodes=len(ops), ops=sorted(set(ops)), batchnorm_nodes=ops.count("BatchNormalization"))
    if info["batchnorm_nodes"]:
        log.info("%d BatchNormalization node(s) left (not after a convolution, nothing to fold into)",
                 info["batchnorm_nodes"])
    return info


def _flat(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    flat: list = []
    for o in out:
        flat += _flat(o)
    return flat


def _save_self_contained(proto, path: Path) -> None:
    import onnx

    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
            break
    if proto.ByteSize() >= 2**31:
        raise ExportError(f"the model is {proto.ByteSize() / 2**30:.1f} GiB: a self-contained ONNX file is limited to "
                          "2 GiB; prune it further or export the dense parts separately")
    onnx.save_model(proto, str(path), save_as_external_data=False)
    external = [p for p in path.parent.iterdir() if p != path and p.name.startswith(path.name) and p.suffix == ".data"]
    for p in external:
        p.unlink()


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX graph is invalid ({_first_line(exc)}); report the model's "
                          "architecture to the edgeprune maintainers") from None


def _slim(proto, example: torch.Tensor, path: Path):
    """Return (model, note): the slimmed graph when onnxruntime says it computes the same outputs, else the input."""
    import numpy as np
    import onnx

    try:
        import onnxslim
    except ImportError:
        return proto, "skipped: onnxslim is not installed"
    try:
        with quiet_export():
            slimmed = onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()))
        if slimmed is None:
            return proto, "skipped: onnxslim returned nothing"
        onnx.checker.check_model(slimmed)
    except Exception as exc:
        log.info("onnxslim failed, keeping the unslimmed graph: %s", _first_line(exc))
        return proto, f"skipped: onnxslim failed ({_first_line(exc)})"
    slim_path = path.with_name(path.stem + ".slim.onnx")
    try:
        onnx.save_model(slimmed, str(slim_path))
        x = example.numpy()
        before = onnxruntime_runner(path)(x)
        after = onnxruntime_runner(slim_path)(x)
        worst = max(float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
                    for a, b in zip(before, after)) if len(before) == len(after) else float("inf")
        tol = min(tolerance(b, SLIM_RTOL) for b in before)
    except Exception as exc:
        return proto, f"skipped: slimmed graph does not run ({_first_line(exc)})"
    finally:
        slim_path.unlink(missing_ok=True)
    if not worst <= tol:
        log.info("onnxslim changed the outputs by %.3g; keeping the unslimmed graph", worst)
        return proto, f"skipped: slimming changed outputs by {worst:.3g}"
    return slimmed, f"applied ({len(proto.graph.node)} → {len(slimmed.graph.node)} nodes)"


def export_onnx(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], *, opset: int = 18, dynamic_batch: bool = False,
    slim: bool = True, real_batch: torch.Tensor | None = None,
) -> dict:
    """Export to one self-contained, checked, validated .onnx file, written atomically.

    Returns ``{"path", "bytes", "opset", "dynamic_batch", "slim", "nodes", "ops", "batchnorm_nodes",
    "max_abs_diff"}``; raises ExportError (nothing left at ``path``) when the export fails or does not match.
    """
    from .bundle import export_all

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"{path}: an ONNX file name must end in .onnx")
    result = export_all(model, path.parent, path.stem, input_shape, formats=("onnx",), real_batch=real_batch,
                        opset=opset, dynamic_batch=dynamic_batch, slim=slim, sevenzip=False)
    return result["artifacts"]["onnx"]
