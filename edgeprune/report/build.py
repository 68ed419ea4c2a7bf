"""The paper-style report of a run folder as data (report.json): SeReNe's Table II–IV columns per model.

For the baseline and the pruned network: parameters (total, nonzero), remaining neurons per layer (output layer
last), MACs, top-1 error, stored size (.onnx and its LZMA .7z; .ptl and .ort where exported) and the max |Δ| of every
artifact against its PyTorch model; SeReNe's compression ratio (baseline parameters ÷ pruned nonzero parameters) and
the remaining parameters per layer in %.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch.nn as nn

from .. import _io
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

FORMAT = "edgeprune-report"
VERSION = 1
ARTIFACT_SUFFIXES = ("onnx", "ptl", "ort")


def _load(path: Path):
    from ..checkpoint import load_checkpoint

    return load_checkpoint(path)


def _label_layers(rows) -> list[str]:
    """Paper-style names: Conv1, Conv2, …, FC1, FC2, … (transposed convolutions: Up1, …)."""
    counts: dict[str, int] = {}
    labels = []
    for r in rows:
        prefix = "FC" if r.kind == "Linear" else "Up" if r.kind.startswith("ConvTranspose") else "Conv"
        counts[prefix] = counts.get(prefix, 0) + 1
        labels.append(f"{prefix}{counts[prefix]}")
    return labels


def _read_manifest(run: Path) -> dict:
    path = run / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); rerun the compress stage or "
                          "fix the file") from None


def _method(manifest: dict, masked_meta: dict) -> str:
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    compress = masked_meta.get("compress") if isinstance(masked_meta.get("compress"), dict) else {}
    return str(manifest.get("method") or config.get("method") or compress.get("method") or "pruned")


def _artifact_sizes(model: nn.Module, run: Path, stem: str, shape: tuple[int, ...], scratch: Path) -> dict:
    """Sizes and max |Δ| of ``run/<stem>.{onnx,ptl,ort}``; an .onnx is exported to ``scratch`` when the run has none
    (the report always has the paper's .onnx → .7z columns)."""
    from ..export import compare, export_all, lzma_7z_bytes, validation_inputs

    out: dict = {"artifacts": {}}
    present = {fmt: run / f"{stem}.{fmt}" for fmt in ARTIFACT_SUFFIXES if (run / f"{stem}.{fmt}").is_file()}
    if present:
        diffs, mismatches = compare(model, {k: str(v) for k, v in present.items()}, validation_inputs(shape))
        out["max_abs_diff"] = diffs
        if mismatches:
            out["mismatches"] = [m.describe() for m in mismatches]
            log.warning("%s: %d artifact mismatch(es): %s", stem, len(mismatches), out["mismatches"][0])
        for fmt, path in present.items():
            out[f"{fmt}_bytes"] = path.stat().st_size
            out["artifacts"][fmt] = path.name
    if "onnx" in present:
        archive = run / f"{stem}.7z"
        if archive.is_file() and archive.stat().st_mtime >= present["onnx"].stat().st_mtime:
            out["onnx_7z_bytes"] = archive.stat().st_size
            out["artifacts"]["7z"] = archive.name
        else:
            out["onnx_7z_bytes"] = lzma_7z_bytes(present["onnx"])
    else:
        exported = export_all(model, scratch, stem, shape, formats=("onnx",))
        out["onnx_bytes"] = exported["onnx_bytes"]
        out["onnx_7z_bytes"] = exported["onnx_7z_bytes"]
        out.setdefault("max_abs_diff", {})["onnx"] = exported["max_abs_diff"]["onnx"]
        out["artifacts"]["onnx"] = "(exported for this report)"
    return out


def _bench(run: Path) -> list[dict]:
    rows = []
    for path in sorted((run / "bench").glob("*/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("skipping unreadable bench file %s", path)
            continue
        models = []
        for m in data.get("models", []) if isinstance(data, dict) else []:
            models.append({k: m.get(k) for k in ("label", "role", "format", "runtime", "threads", "runs", "mean_ms",
                                                   "median_ms", "p90_ms", "std_ms", "speedup") if k in m})
        rows.append({"device": path.parent.name, "file": str(path.relative_to(run)), "models": models})
    return rows


def build_report(run_dir: str | Path) -> dict:
    """Collect report.json's content from a run folder (see :func:`edgeprune.report.write_report`)."""
    from ..models import input_shape_of
    from ..summary import summarize

    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder; give the --out folder of `edgeprune compress`")
    for name in ("baseline.pt", "masked.pt"):
        if not (run / name).is_file():
            raise CheckpointError(f"{run / name} is missing: the run did not finish its compress stage; "
                                  f"finish it with `edgeprune compress --resume {run}`")
    manifest = _read_manifest(run)
    base = _load(run / "baseline.pt")
    masked = _load(run / "masked.pt")
    slim = _load(run / "model.pt") if (run / "model.pt").is_file() else None
    shape = base.meta.get("input_shape") or masked.meta.get("input_shape")
    if shape is None and base.arch is not None:
        shape = input_shape_of({"name": base.arch["name"], "kwargs": base.arch.get("kwargs", {})})
    if shape is None:
        raise CheckpointError(f"{run / 'baseline.pt'} records no input_shape; re-save it with meta['input_shape']")
    shape = tuple(int(s) for s in shape)

    s_base = summarize(base.model, shape)
    s_masked = summarize(masked.model, shape)
    if [r.name for r in s_base.layers] != [r.name for r in s_masked.layers]:
        raise CheckpointError(f"{run / 'masked.pt'} does not have the layers of baseline.pt; the pruned checkpoint "
                              "must keep the baseline architecture (zeros instead of removed neurons)")
    s_slim = summarize(slim.model, shape) if slim is not None else None
    labels = _label_layers(s_base.layers)

    layers = []
    for label, b, m in zip(labels, s_base.layers, s_masked.layers):
        layers.append({"name": b.name, "label": label, "kind": b.kind, "neurons_before": b.alive_neurons,
                       "neurons_after": m.alive_neurons, "params": b.params, "remaining": m.nonzero,
                       "remaining_pct": 100.0 * m.nonzero / b.params if b.params else 0.0})

    with tempfile.TemporaryDirectory(prefix="edgeprune-report-") as tmp:
        scratch = Path(tmp)
        baseline = {
            "params_total": s_base.params_total, "params_nonzero": s_base.params_nonzero,
            "neurons": s_base.alive_neurons, "macs": s_base.macs, "top1_error": base.meta.get("top1_error"),
            **_artifact_sizes(base.model, run, "baseline", shape, scratch / "baseline"),
        }
        shipped = slim.model if slim is not None else masked.model
        pruned = {
            "params_total": (s_slim or s_masked).params_total, "params_nonzero": s_masked.params_nonzero,
            "neurons": s_masked.alive_neurons, "macs": (s_slim or s_masked).macs,
            "macs_source": "slim model (after surgery)" if s_slim else "masked model (dense count; no surgery run)",
            "top1_error": (slim.meta.get("top1_error") if slim is not None and "top1_error" in slim.meta
                           else masked.meta.get("top1_error")),
            "slim": slim is not None,
            **_artifact_sizes(shipped, run, "model", shape, scratch / "model"),
        }
        if s_slim is not None:
            pruned["neurons_slim"] = s_slim.neurons
            pruned["params_nonzero_slim"] = s_slim.params_nonzero
            masked_sizes = _artifact_sizes(masked.model, scratch, "masked", shape, scratch / "masked")
            pruned["masked_onnx_bytes"] = masked_sizes["onnx_bytes"]
            pruned["masked_onnx_7z_bytes"] = masked_sizes["onnx_7z_bytes"]

    from ..export import compression_ratio

    arch = base.arch or {}
    report = {
        "format": FORMAT,
        "version": VERSION,
        "run": str(run),
        "dataset": manifest.get("dataset") or base.meta.get("dataset") or masked.meta.get("dataset"),
        "arch": manifest.get("arch") if isinstance(manifest.get("arch"), str) else arch.get("name"),
        "arch_spec": arch,
        "method": _method(manifest, masked.meta),
        "input_shape": list(shape),
        "baseline": baseline,
        "pruned": pruned,
        "compression_ratio": compression_ratio(s_base.params_total, s_masked.params_nonzero),
        "remaining_params_pct": {row["label"]: row["remaining_pct"] for row in layers},
        "layers": layers,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if isinstance(manifest.get("config"), dict):
        report["config"] = manifest["config"]
    metrics = _io.read_jsonl(run / "metrics.jsonl")
    if metrics:
        report["metrics"] = {"rows": len(metrics), "last": metrics[-1]}
    int8 = _int8(run, pruned)
    if int8:
        report["int8"] = int8
    bench = _bench(run)
    if bench:
        report["bench"] = bench
    return report


def _int8(run: Path, pruned: dict) -> dict | None:
    """The INT8 slim model's row (from ``model.int8.json``, written by ``--quantize int8``): same parameters and
    MACs as the slim float model, its own sizes and test error, the gate verdict and agreement with float."""
    path = run / "model.int8.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("skipping unreadable INT8 record %s", path)
        return None
    shipped = bool(rec.get("shipped")) and (run / "model.int8.onnx").is_file()
    row = {"params_total": pruned.get("params_total"), "macs": pruned.get("macs"),
           "top1_error": (rec.get("int8") or {}).get("top1_error"),
           "float_top1_error": (rec.get("float") or {}).get("top1_error"), "drop_pt": rec.get("drop_pt"),
           "max_drop_pt": rec.get("max_drop_pt"), "passed": rec.get("passed"), "shipped": shipped,
           "quantization": rec.get("quantization"), "agreement": rec.get("agreement")}
    if shipped:
        row.update({k: (run / f"model.int8{suffix}").stat().st_size
                    for k, suffix in (("onnx_bytes", ".onnx"), ("onnx_7z_bytes", ".7z"), ("ort_bytes", ".ort"))
                    if (run / f"model.int8{suffix}").is_file()})
    return row
