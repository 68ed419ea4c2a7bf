"""`edgeprune info`: per-layer neurons, parameters, nonzero parameters and MACs of a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import app, echo, parse_shape, print_table


def load_model_arg(path_or_arch: str, arch: str | None, trust_pickle: bool):
    """A checkpoint path, or a zoo name (fresh weights) when no such file exists."""
    from ..checkpoint import load_checkpoint
    from ..errors import CheckpointError
    from ..models import create_model, get_entry, input_shape_of, normalize_arch

    p = Path(path_or_arch)
    if p.exists():
        loaded = load_checkpoint(p, arch=arch, trust_pickle=trust_pickle)
        shape = loaded.meta.get("input_shape")
        if shape is None and loaded.arch is not None:
            shape = input_shape_of({"name": loaded.arch["name"], "kwargs": loaded.arch.get("kwargs", {})})
        return loaded.model, tuple(shape) if shape else None, loaded.meta
    from ..errors import ModelError
    from ..models import trust_code
    from ..models._external import is_reference

    if is_reference(path_or_arch):
        trust_code(path_or_arch)  # named on the command line: an explicit act
    try:
        get_entry(normalize_arch(path_or_arch)["name"])
    except ModelError as exc:
        if is_reference(path_or_arch):
            raise
        raise CheckpointError(f"{p}: no such file (and not a zoo architecture name)") from exc
    except Exception:
        raise CheckpointError(f"{p}: no such file (and not a zoo architecture name)") from None
    try:
        shape = input_shape_of(path_or_arch)
    except ModelError:
        shape = None  # user code: --input-shape says it
    return create_model(path_or_arch), shape, {}


@app.command()
def info(
    model: str = typer.Argument(None, help="Checkpoint (.pt) or a zoo architecture name."),
    arch: str = typer.Option(None, help="Architecture for a plain state_dict file."),
    input_shape: str = typer.Option(None, help="One sample's shape, e.g. 3,32,32 (default: from the model)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    list_models: bool = typer.Option(False, "--list", help="List the zoo architectures and datasets."),
    trust_pickle: bool = typer.Option(False, help="Allow loading a pickled full model (can run arbitrary code)."),
) -> None:
    """Show per-layer neurons, parameters, nonzero parameters and MACs."""
    from ..errors import ConfigError
    from ..summary import summarize

    if list_models:
        from ..data import list_datasets
        from ..models import get_entry, list_models as zoo

        rows = [{"name": n, "input_shape": list(get_entry(n).input_shape), "num_classes": get_entry(n).num_classes,
                 "description": get_entry(n).description} for n in zoo()]
        if as_json:
            echo(json.dumps({"models": rows, "datasets": list_datasets()}, indent=2))
        else:
            for r in rows:
                echo(f"{r['name']:<18} {str(tuple(r['input_shape'])):<14} {r['description']}")
            echo("torchvision:NAME   any torchvision classification model")
            echo("datasets: " + ", ".join(list_datasets()))
        return
    if model is None:
        raise ConfigError("give a checkpoint or architecture name (or --list)")
    net, shape, meta = load_model_arg(model, arch, trust_pickle)
    if input_shape:
        shape = parse_shape(input_shape)
    if shape is None:
        raise ConfigError("cannot tell the model's input shape; pass --input-shape C,H,W")
    try:
        s = summarize(net, shape)
    except RuntimeError as exc:
        raise ConfigError(f"the model does not accept input of shape {shape}: {str(exc).splitlines()[0]}; "
                          "pass --input-shape") from None
    result = s.to_dict()
    for key in ("dataset", "top1_error", "test_accuracy"):
        if key in meta:
            result[key] = meta[key]
    if as_json:
        echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{model}  input {shape}")
    for col in ("layer", "type", "neurons", "alive", "params", "nonzero", "MACs"):
        t.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in s.layers:
        t.add_row(r.name, r.kind, str(r.neurons), str(r.alive_neurons), f"{r.params:,}", f"{r.nonzero:,}",
                  f"{r.macs:,}")
    t.add_row("total", "", "", "", f"{s.params_total:,}", f"{s.params_nonzero:,}", f"{s.macs:,}", end_section=True)
    print_table(t)
    if "top1_error" in meta:
        echo(f"test top-1 error: {meta['top1_error']:.2%} ({meta.get('dataset', '?')})")
