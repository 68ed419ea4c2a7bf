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
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Export to ONNX (+ LZMA .7z), TorchScript lite and ORT format; validate every artifact against PyTorch."""
    from ..errors import ConfigError
    from ..export import export_all
    from .info import load_model_arg

    config = ExportConfig(formats=format, out=str(out), stem=name, input_shape=input_shape,
                          dynamic_batch=dynamic_batch, slim=slim, opset=opset, real_samples=real_samples)
    net, shape, meta = load_model_arg(model, arch, trust_pickle)
    shape = config.input_shape or shape
    if shape is None:
        raise ConfigError("cannot tell the model's input shape; pass --input-shape C,H,W")
    stem = config.stem or (Path(model).stem if Path(model).exists() else model.replace(":", "-").replace("/", "-"))
    result = export_all(net, config.out, stem, shape, formats=config.formats,
                        real_batch=_real_batch(meta, config.real_samples), opset=config.opset,
                        dynamic_batch=config.dynamic_batch, slim=config.slim)
    if as_json:
        echo(json.dumps(result, indent=2))
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
    print_table(t)
    echo(f"params {result['params_total']:,} (nonzero {result['params_nonzero']:,}), MACs {result['macs']:,}"
         if result.get("macs") is not None else f"params {result['params_total']:,}")
