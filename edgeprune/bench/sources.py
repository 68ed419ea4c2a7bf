"""Which files to benchmark: a run folder's slim ``model.*`` (and its INT8 ``model.int8.*`` when shipped) against
its dense ``baseline.*``, per runtime."""

from __future__ import annotations

from pathlib import Path

from ..errors import BenchError
from .runtimes import ModelSource

# Preferred artifact per runtime, best first; a checkpoint converts to any runtime.
_PREFERENCE = {
    "onnxruntime": (".onnx", ".ort", ".pt"),
    "torch": (".pt",),
    "ptl": (".ptl", ".pt"),
}


def _pick(folder: Path, stem: str, runtime: str) -> Path | None:
    for suffix in _PREFERENCE.get(runtime, (".onnx", ".pt")):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def resolve_run_folder(folder: str | Path, runtime: str) -> tuple[ModelSource, ModelSource | None]:
    """(slim, dense) sources of a run folder: ``model.onnx`` vs ``baseline.onnx`` for ONNX Runtime (falling back to
    ``.ort`` then the ``.pt`` checkpoints), ``.pt`` for torch, ``.ptl`` (or ``.pt``) for the lite interpreter.
    The dense source is None when the run holds no baseline."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"{folder}: no such run folder")
    slim = _pick(folder, "model", runtime)
    if slim is None:
        wanted = ", ".join(f"model{s}" for s in _PREFERENCE.get(runtime, ()))
        raise BenchError(f"{folder} holds no model to benchmark with --runtime {runtime} (looked for {wanted}); "
                         "export the run first or give the model file")
    dense = _pick(folder, "baseline", runtime)
    return (ModelSource(slim, label=f"slim ({slim.name})", role="model"),
            ModelSource(dense, label=f"dense ({dense.name})", role="baseline") if dense else None)


def int8_source(folder: str | Path, runtime: str) -> ModelSource | None:
    """The run folder's INT8 slim model (``model.int8.onnx``, else ``.ort``) for ONNX Runtime; None when the run
    holds none (no ``--quantize int8``, or a model that missed the accuracy gate) or the runtime cannot run it."""
    if runtime != "onnxruntime":
        return None
    folder = Path(folder)
    for suffix in (".onnx", ".ort"):
        p = folder / f"model.int8{suffix}"
        if p.is_file():
            return ModelSource(p, label=f"slim INT8 ({p.name})", role="model")
    return None
