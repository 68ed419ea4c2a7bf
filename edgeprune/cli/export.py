"""`edgeprune export`: write .onnx (+ .7z), .ptl and .ort files for a checkpoint, each validated against it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from ._app import app, echo, parse_shape, print_table


@dataclasses.dataclass
class ExportConfig:
    """Options of ``edgeprune export`` (validated when built)."""

    formats: tuple[str, ...] = ("onnx", "ptl", "ort")
    out: str = "."
    stem: str | None = None
    input_shape: tuple[int, ...] | None = None
    dynamic_batch: bool = False
    slim: bool = True
    opset: int = 18
    real_samples: int = 16
    quantize: str = "none"
    """``int8``: also write ``<stem>.int8.{onnx,ort,7z}`` (see :mod:`edgeprune.export.quantize`)."""

    def __post_init__(self):
        from ..errors import ConfigError
        from ..export import parse_formats
        from ..export.onnx_export import check_opset

        self.formats = parse_formats(self.formats)
        check_opset(self.opset)
        if self.input_shape is not None:
            if isinstance(self.input_shape, str):
                self.input_shape = parse_shape(self.input_shape)
            if not self.input_shape or any(int(s) <= 0 for s in self.input_shape):
                raise ConfigError(f"--input-shape must be positive integers like 1,28,28, got {self.input_shape!r}")
            self.input_shape = tuple(int(s) for s in self.input_shape)
        if self.stem is not None and (not self.stem or "/" in self.stem or self.stem.startswith(".")):
            raise ConfigError(f"--name must be a plain file stem like 'model', got {self.stem!r}")
        if not isinstance(self.real_samples, int) or self.real_samples < 0:
            raise ConfigError(f"--real-samples must be a non-negative integer, got {self.real_samples!r}")
        from ..export.quantize import parse_quantize

        self.quantize = "int8" if parse_quantize(self.quantize) else "none"


def _real_batch(meta: dict, n: int):
    """Up to ``n`` test samples of the checkpoint's dataset, or None when it is not on this machine."""
    import logging

    from ..errors import DatasetError

    name = meta.get("dataset")
    if not name or n <= 0:
        return None
    try:
        from ..data import load_dataset

        bundle = load_dataset(name, options=meta.get("data_options"))
    except DatasetError as exc:
        logging.getLogger("edgeprune.export").info("validating on random inputs only: %s", exc)
        return None
    import torch

    k = min(n, len(bundle.test))
    return torch.stack([bundle.test[i][0] for i in range(k)])


@app.command()
def export(
    model: str = typer.Argument(..., help="Checkpoint (.pt: zoo, masked or slim) or a zoo architecture name."),
    format: str = typer.Option("onnx,ptl,ort", "--format", "-f", help="Comma-separated: onnx, ptl, ort."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for the artifacts."),
    name: str = typer.Option(None, "--name", help="File stem of the artifacts (default: the checkpoint's stem)."),
    input_shape: str = typer.Option(None, help="One sample's shape, e.g. 3,32,32 (default: from the checkpoint)."),
    dynamic_batch: bool = typer.Option(False, help="Give the ONNX / ORT input a dynamic batch axis."),
    slim: bool = typer.Option(True, help="Simplify the ONNX graph with onnxslim (kept only if outputs match)."),
    opset: int = typer.Option(18, help="ONNX opset (≥ 17)."),
    real_samples: int = typer.Option(16, help="Also validate on this many test samples of the checkpoint's dataset."),
    arch: str = typer.Option(None, help="Architecture for a plain state_dict file."),
    trust_pickle: bool = typer.Option(False, help="Allow loading a pickled full model (can run arbitrary code)."),
    quantize: str = typer.Option("none", help="int8: also write an INT8 model (<name>.int8.onnx/.ort/.7z), "
                                              "calibrated on the checkpoint's dataset and gated on its test split."),
    quant_mode: str = typer.Option("static", help="INT8: static (QDQ, per-channel weights, calibrated activations) "
                                                  "or dynamic (Linear layers only, no calibration)."),
    calibration: str = typer.Option("minmax", help="INT8 static: activation ranges by minmax, entropy or percentile."),
    calibration_samples: int = typer.Option(256, help="INT8 static: training images used for calibration."),
    max_int8_drop: float = typer.Option(0.5, help="INT8 gate: largest allowed test top-1 error increase over the "
                                                  "float model, in percentage points."),
    keep_int8: bool = typer.Option(False, help="Ship the INT8 model even when it misses --max-int8-drop."),
    dataset: str = typer.Option(None, help="INT8: dataset for calibration and the gate (default: the checkpoint's)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Export to ONNX (+ LZMA .7z), TorchScript lite and ORT format; validate every artifact against PyTorch."""
    from ..errors import ConfigError
    from ..export import export_all
    from .info import load_model_arg

    config = ExportConfig(formats=format, out=str(out), stem=name, input_shape=input_shape,
                          dynamic_batch=dynamic_batch, slim=slim, opset=opset, real_samples=real_samples,
                          quantize=quantize)
    qconfig = None
    if config.quantize != "int8" and (dataset or keep_int8):
        raise ConfigError("--dataset and --keep-int8 apply to --quantize int8; add it or drop them")
    if config.quantize == "int8":
        from ..export.quantize import QuantizeConfig

        qconfig = QuantizeConfig(mode=quant_mode, calibration=calibration, calibration_samples=calibration_samples,
                                 max_drop=max_int8_drop, keep_failed=keep_int8)
    net, shape, meta = load_model_arg(model, arch, trust_pickle)
    shape = config.input_shape or shape
    if shape is None:
        raise ConfigError("cannot tell the model's input shape; pass --input-shape C,H,W")
    stem = config.stem or (Path(model).stem if Path(model).exists() else model.replace(":", "-").replace("/", "-"))
    int8_data = _int8_data(meta, dataset, shape) if qconfig is not None else None  # refused before anything is written
    result = export_all(net, config.out, stem, shape, formats=config.formats,
                        real_batch=_real_batch(meta, config.real_samples), opset=config.opset,
                        dynamic_batch=config.dynamic_batch, slim=config.slim)
    if qconfig is not None:
        from ..export.quantize import export_int8

        result["int8"] = export_int8(net, config.out, stem, shape, int8_data, qconfig, ort="ort" in config.formats,
                                     opset=config.opset)
    if as_json:
        echo(json.dumps(result, indent=2))
        _int8_verdict(result.get("int8"))
        return
    from rich.table import Table

    t = Table(title=f"{model} → {config.out}  (validated on {', '.join(result['validated_on'])})")
    for col in ("artifact", "bytes", "max |Δ|", "notes"):
        t.add_column(col, justify="left" if col in ("artifact", "notes") else "right", no_wrap=col != "notes")
    for key, a in result["artifacts"].items():
        notes = {"onnx": f"opset {a.get('opset')}, slim {a.get('slim')}", "7z": "LZMA of the .onnx",
                 "ptl": f"optimize_for_mobile {a.get('optimize_for_mobile')}", "ort": "ORT format, arm"}.get(key, "")
        diff = f"{a['max_abs_diff']:.2g}" if "max_abs_diff" in a else ""
        t.add_row(Path(a["path"]).name, f"{a['bytes']:,}", diff, notes)
    q = result.get("int8")
    if q is not None:
        for key in ("onnx", "ort", "7z"):
            if key in (q.get("artifacts") or {}):
                a = q["agreement"] if key == "onnx" else q.get("ort", {}).get("agreement_with_onnx", {})
                diff = f"{a['max_abs_diff']:.2g}" if key != "7z" else ""
                notes = {"onnx": f"INT8 {q['quantization']['format']}, top-1 agreement {a.get('top1_agreement', 0):.1%}",
                         "ort": "INT8, ORT format, arm", "7z": "LZMA of the INT8 .onnx"}[key]
                t.add_row(q["artifacts"][key], f"{q[f'{key}_bytes' if key != '7z' else 'onnx_7z_bytes']:,}", diff,
                          notes)
    print_table(t)
    echo(f"params {result['params_total']:,} (nonzero {result['params_nonzero']:,}), MACs {result['macs']:,}"
         if result.get("macs") is not None else f"params {result['params_total']:,}")
    if q is not None:
        echo(f"INT8 gate: test top-1 error {100 * q['int8']['top1_error']:.2f}% vs float "
             f"{100 * q['float']['top1_error']:.2f}% ({q['drop_pt']:+.2f} pt, limit {q['max_drop_pt']:g} pt) on "
             f"{q['test_samples']:,} {q['dataset']} test images: {'passed' if q['passed'] else 'MISSED'}"
             + ("" if q["passed"] or not q["shipped"] else " (shipped anyway: --keep-int8)"))
    _int8_verdict(q)


def _int8_data(meta: dict, dataset: str | None, shape):
    """The INT8 calibration and gate data: the checkpoint's dataset read as it was trained (image size, channels,
    statistics) unless --dataset names another; checked against the model's input before anything is exported."""
    from ..data import load_dataset
    from ..errors import ConfigError
    from ..export.quantize import check_int8_data

    name = dataset or meta.get("dataset")
    if not name:
        raise ConfigError("--quantize int8 needs the model's dataset (calibration images and the test split of the "
                          "accuracy gate); the checkpoint records none: pass --dataset NAME")
    options = meta.get("data_options") if name == meta.get("dataset") else None
    data = load_dataset(name, options=options)
    check_int8_data(data, shape)
    return data


def _int8_verdict(record: dict | None) -> None:
    """A missed gate is an error (exit 1) unless the user asked to ship the INT8 model anyway."""
    from ..errors import QuantizationGateError
    from ..export.quantize import gate_message

    if record is not None and not record["passed"] and not record["shipped"]:
        raise QuantizationGateError(gate_message(record))
