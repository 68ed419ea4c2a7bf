"""Validation of exported artifacts against the PyTorch model they came from.

Every artifact (.onnx and .ort through onnxruntime, .ptl through the lite interpreter) runs on the same inputs as the
PyTorch model; all mismatches are collected and reported together in one :class:`ExportError`.

Tolerance: an output ``y`` matches when ``max|y_artifact - y_torch| <= rtol * max(1, max|y_torch|)`` with
``rtol = 1e-4``. Float32 kernels that reorder sums (fused Conv+BN, Gemm, ORT's graph optimizations) differ from eager
PyTorch by ~1e-7..1e-5 of the output scale; a real export bug (a baked-in branch, a Python random value frozen as a
constant, a wrong layout) differs by the output's own magnitude, orders of magnitude above the tolerance.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ExportError

log = logging.getLogger(__name__)

RTOL = 1e-4
"""Relative tolerance of :func:`tolerance` (scaled by ``max(1, max|y|)``)."""

Runner = Callable[[np.ndarray], list]


@dataclasses.dataclass
class Mismatch:
    artifact: str
    input: str
    shape: str
    max_abs_diff: float
    tolerance: float
    reason: str = ""

    def describe(self) -> str:
        if self.reason:
            return f"{self.artifact} on {self.input}: {self.reason}"
        return (f"{self.artifact} on {self.input} (output {self.shape}): max|Δ| {self.max_abs_diff:.3g} > "
                f"tolerance {self.tolerance:.3g}")


def tolerance(reference: np.ndarray, rtol: float = RTOL) -> float:
    """Absolute tolerance for one output: ``rtol * max(1, max|y|)`` (relative to the output's scale)."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return rtol * max(1.0, scale)


def example_input(input_shape: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """The deterministic random input used to trace / export (standard normal, like normalized data)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=g)


def validation_inputs(
    input_shape: Sequence[int], real_batch: torch.Tensor | None = None, n_random: int = 2, batch: int = 2,
    max_real: int = 16,
) -> dict[str, torch.Tensor]:
    """Random batches (seeds distinct from the export input's) plus up to ``max_real`` real samples."""
    inputs = {f"random#{i + 1}": example_input(input_shape, batch, seed=1000 + i) for i in range(n_random)}
    if real_batch is not None and len(real_batch):
        real = real_batch[:max_real].detach().float().cpu()
        if tuple(real.shape[1:]) != tuple(input_shape):
            raise ExportError(f"real validation samples have shape {tuple(real.shape[1:])}, the export input shape is "
                              f"{tuple(input_shape)}; pass samples of the model's input shape")
        inputs["real"] = real
    return inputs


def _as_arrays(out) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        arrays: list[np.ndarray] = []
        for o in out:
            arrays += _as_arrays(o)
        return arrays
    return [np.asarray(out)]


def torch_runner(model: nn.Module) -> Runner:
    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return _as_arrays(model(torch.from_numpy(x)))

    return run


def onnxruntime_runner(path: str | Path) -> Runner:
    """A runner for .onnx or .ort files (ORT picks the format from the ``.ort`` suffix)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in sess.run(None, {name: x})]

    run.fixed_batch = _fixed_batch(sess.get_inputs()[0].shape)  # type: ignore[attr-defined]
    return run


def _fixed_batch(shape) -> int | None:
    first = shape[0] if shape else None
    return first if isinstance(first, int) else None


def lite_runner(path: str | Path) -> Runner:
    from torch.jit.mobile import _load_for_lite_interpreter

    module = _load_for_lite_interpreter(str(path))

    def run(x: np.ndarray) -> list[np.ndarray]:
        return _as_arrays(module(torch.from_numpy(x)))

    return run


def runner_for(path: str | Path) -> Runner:
    suffix = Path(path).suffix.lower()
    if suffix in (".onnx", ".ort"):
        return onnxruntime_runner(path)
    if suffix == ".ptl":
        return lite_runner(path)
    raise ExportError(f"{path}: unknown artifact type {suffix!r}; expected .onnx, .ort or .ptl")


def _run_batched(run: Runner, x: np.ndarray) -> list[np.ndarray]:
    """Run a whole batch, or sample-group by sample-group when the artifact has a fixed batch size."""
    fixed = getattr(run, "fixed_batch", None)
    if fixed is None:
        try:
            return run(x)
        except Exception:
            if x.shape[0] == 1:
                raise
            fixed = 1  # e.g. a traced graph with a baked batch size: validate it at its own size
    if x.shape[0] == fixed:
        return run(x)
    if x.shape[0] % fixed:
        raise ExportError(f"cannot feed a batch of {x.shape[0]} to an artifact with fixed batch {fixed}")
    parts = [run(x[i:i + fixed]) for i in range(0, x.shape[0], fixed)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def compare(
    model: nn.Module, artifacts: dict[str, str | Path], inputs: dict[str, torch.Tensor], rtol: float = RTOL,
) -> tuple[dict[str, float], list[Mismatch]]:
    """Run every artifact and the model on every input; return max |Δ| per artifact and all mismatches."""
    model = model.eval()
    reference = torch_runner(model)
    expected = {label: reference(x.numpy()) for label, x in inputs.items()}
    diffs: dict[str, float] = {}
    mismatches: list[Mismatch] = []
    for name, path in artifacts.items():
        try:
            run = runner_for(path)
        except ExportError:
            raise
        except Exception as exc:
            mismatches.append(Mismatch(name, "load", "", float("inf"), 0.0, f"cannot be loaded ({_first_line(exc)})"))
            diffs[name] = float("inf")
            continue
        worst = 0.0
        for label, x in inputs.items():
            want = expected[label]
            try:
                got = _run_batched(run, x.numpy())
            except Exception as exc:
                mismatches.append(Mismatch(name, label, "", float("inf"), 0.0, f"fails to run ({_first_line(exc)})"))
                worst = float("inf")
                continue
            if len(got) != len(want):
                mismatches.append(Mismatch(name, label, "", float("inf"), 0.0,
                                           f"returns {len(got)} outputs, PyTorch {len(want)}"))
                worst = float("inf")
                continue
            for k, (g, w) in enumerate(zip(got, want)):
                where = label if len(want) == 1 else f"{label} output {k}"
                if g.shape != w.shape:
                    mismatches.append(Mismatch(name, where, f"{_shape(g)} vs {_shape(w)}", float("inf"), 0.0,
                                               f"output shape {_shape(g)}, PyTorch {_shape(w)}"))
                    worst = float("inf")
                    continue
                d = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
                if np.isnan(d):
                    d = float("inf")
                tol = tolerance(w, rtol)
                worst = max(worst, d)
                if not d <= tol:
                    mismatches.append(Mismatch(name, where, _shape(w), d, tol))
        diffs[name] = worst
    return diffs, mismatches


def raise_mismatches(mismatches: list[Mismatch], hint: str = "") -> None:
    """Raise one ExportError listing every mismatch (no-op when there are none)."""
    if not mismatches:
        return
    listed = "; ".join(m.describe() for m in mismatches[:8])
    more = f"; … {len(mismatches) - 8} more" if len(mismatches) > 8 else ""
    hint = hint or ("the model's output depends on something export cannot capture (Python randomness, "
                    "data-dependent control flow, training-mode layers?); make forward() a pure tensor function")
    raise ExportError(f"{len(mismatches)} mismatch(es) between exported artifacts and the PyTorch model: "
                      f"{listed}{more}; {hint}")


def _shape(a: np.ndarray) -> str:
    return "×".join(str(s) for s in a.shape) or "scalar"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
