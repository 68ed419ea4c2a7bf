"""The `edgeprune analyze entropy | sharpness | landscape` jobs: load checkpoints and data, run the measurement,
write JSON and figures. The measurements themselves live in :mod:`.psp`, :mod:`.hessian` and :mod:`.landscape`."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from .. import _io
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder → its ``masked.pt`` (same shapes as the baseline), else ``model.pt``."""
    p = Path(path)
    if p.is_dir():
        for name in ("masked.pt", "model.pt"):
            if (p / name).exists():
                return p / name
        raise CheckpointError(f"{p} holds neither masked.pt nor model.pt; give a checkpoint file")
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    return p


def load_for_analysis(path: str | os.PathLike):
    from ..checkpoint import load_checkpoint

    return load_checkpoint(resolve_model_path(path))


def sample_batches(dataset: str, data_dir: str | None, split: str, samples: int | None, batch_size: int,
                   seed: int = 0):
    """Fixed (seeded) subset of a split as a list of batches, and the data bundle."""
    from ..data import Batches, load_dataset

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    data = load_dataset(dataset, data_dir, seed=seed)
    part = data.train if split == "train" else data.test
    if samples is not None and samples < len(part):
        g = torch.Generator().manual_seed(seed)
        part = part.subset(torch.randperm(len(part), generator=g)[:samples])
    return list(Batches(part, batch_size)), data


def _dataset_of(config_dataset: str | None, meta: dict, path) -> str:
    ds = config_dataset or meta.get("dataset")
    if not ds:
        raise ConfigError(f"{path} does not record its dataset; pass --dataset")
    return ds


def _sparsity(model) -> float:
    from ..masks import masks_from_zeros, sparsity_of

    return sparsity_of(masks_from_zeros(model))


# --------------------------------------------------------------------------------------------------- entropy


@dataclasses.dataclass
class EntropyConfig:
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "train"
    samples: int | None = 10_000
    """Inputs used (a fixed random subset of the split); None for all."""
    batch_size: int = 256
    second_order: bool = False
    pairs: int | None = None
    """Sampled pairs per layer for the second order (default: all pairs in layers up to 1024 neurons)."""
    conv_mode: str = "filter"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        from .psp import CONV_MODES

        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.pairs is not None and self.pairs < 1:
            raise ConfigError(f"--pairs must be at least 1, got {self.pairs}")
        if self.pairs is not None and not self.second_order:
            raise ConfigError("--pairs only applies with --second-order")
        if self.conv_mode not in CONV_MODES:
            raise ConfigError(f"--conv-mode must be one of {', '.join(CONV_MODES)}, got {self.conv_mode!r}")


def layer_summary(le, num_classes: int) -> dict:
    from .entropy import summary_stats

    row = {"name": le.name, "producer": le.producer, "neurons": le.neurons, "positions": le.positions,
           "samples_per_class": le.samples_per_class, "h1": summary_stats(le.h1), "h1_max_possible": num_classes,
           "psp_sq_mean": le.psp_sq_mean, "always_off": int((le.on_fraction == 0).sum()),
           "always_on": int((le.on_fraction == 1).sum())}
    alive = le.on_fraction > 0
    # never-on neurons have 0 bits by construction; statistics without them describe the working neurons
    row["h1_alive"] = summary_stats(le.h1[alive])
    if le.h2 is not None:
        row["h2"] = summary_stats(le.h2)
        row["h2_max_possible"] = 2 * num_classes
        row["pairs"] = "all" if le.pair_index is None else int(le.pair_index.shape[1])
        if le.pair_index is None:
            i, j = torch.triu_indices(le.neurons, le.neurons, offset=1)
        else:
            i, j = le.pair_index
        row["h2_alive"] = summary_stats(le.h2[alive[i] & alive[j]])
    return row


def analyze_entropy(model_path: str | os.PathLike, config: EntropyConfig, out: str | os.PathLike,
                    compare: str | os.PathLike | None = None, labels: tuple[str, str] | None = None) -> dict:
    """PSP-entropy (paper eqs. 4–5, optionally second order) and mean squared PSP of one model, or two overlaid
    (``compare``). Writes ``OUT/entropy.json``, ``OUT/entropy.npz`` (raw per-neuron / per-pair values),
    ``OUT/entropy_order1.png``, ``OUT/entropy_order2.png`` (with ``second_order``) and ``OUT/psp_norm.png``."""
    import numpy as np

    from ..train import resolve_device
    from . import plots
    from .psp import psp_entropy

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    device = resolve_device(config.device)
    paths = [resolve_model_path(model_path)] + ([resolve_model_path(compare)] if compare is not None else [])
    names = list(labels) if labels else [p.parent.name if p.name in ("masked.pt", "model.pt") else p.stem
                                         for p in paths]
    if len(names) != len(paths):
        raise ConfigError(f"give {len(paths)} labels, got {len(names)}")
    if len(set(names)) != len(names):  # e.g. two finetune-seed0.pt from different folders
        names = [f"{n} ({k + 1})" for k, n in enumerate(names)]
    loaded = [load_for_analysis(p) for p in paths]
    dataset = _dataset_of(config.dataset, loaded[0].meta, paths[0])
    batches, data = sample_batches(dataset, config.data_dir, config.split, config.samples, config.batch_size,
                                   config.seed)
    results, models = [], []
    arrays = {}
    for label, path, ld in zip(names, paths, loaded):
        layers = psp_entropy(ld.model, batches, data.num_classes, config.second_order, config.pairs,
                             config.conv_mode, device, config.seed, description=f"PSP-entropy {label}")
        models.append((label, layers))
        results.append({"label": label, "path": str(path), "top1_error": ld.meta.get("top1_error"),
                        "sparsity": _sparsity(ld.model),
                        "layers": [layer_summary(le, data.num_classes) for le in layers]})
        for le in layers:
            arrays[f"{label}/{le.name}/h1"] = le.h1.numpy()
            arrays[f"{label}/{le.name}/psp_sq"] = le.psp_sq_per_neuron.numpy()
            if le.h2 is not None:
                arrays[f"{label}/{le.name}/h2"] = le.h2.numpy()
            if le.pair_index is not None:
                arrays[f"{label}/{le.name}/pairs"] = le.pair_index.numpy()
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "entropy.json"), "npz": str(out / "entropy.npz"),
             "order1": str(plots.entropy_histograms(models, out / "entropy_order1.png", 1, data.num_classes)),
             "psp_norm": str(plots.psp_norm_bars(models, out / "psp_norm.png"))}
    if config.second_order:
        files["order2"] = str(plots.entropy_histograms(models, out / "entropy_order2.png", 2, data.num_classes))
    with _io.atomic_path(out / "entropy.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    report = {"dataset": dataset, "split": config.split, "samples": sum(int(y.numel()) for _, y in batches),
              "num_classes": data.num_classes, "config": dataclasses.asdict(config), "models": results,
              "files": files}
    _io.write_json(out / "entropy.json", report)
    return report


# ------------------------------------------------------------------------------------------------- sharpness


@dataclasses.dataclass
class SharpnessConfig:
    dataset: str | None = None
    data_dir: str | None = None
    top: int = 5
    batches: int = 4
    batch_size: int = 256
    method: str = "lanczos"
    iters: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        from .hessian import METHODS

        if self.top < 1:
            raise ConfigError(f"--top must be at least 1, got {self.top}")
        if self.batches < 1 or self.batch_size < 1:
            raise ConfigError("--batches and --batch-size must be at least 1")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.iters is not None and self.iters < 1:
            raise ConfigError(f"--iters must be at least 1, got {self.iters}")


def analyze_sharpness(model_path: str | os.PathLike, config: SharpnessConfig) -> dict:
    """Top-k Hessian eigenvalues of the training loss over the surviving parameters, on ``batches × batch_size``
    fixed random training samples (see :mod:`.hessian`)."""
    from ..train import resolve_device
    from .hessian import top_hessian_eigenvalues

    path = resolve_model_path(model_path)
    ld = load_for_analysis(path)
    dataset = _dataset_of(config.dataset, ld.meta, path)
    batches, _ = sample_batches(dataset, config.data_dir, "train", config.batches * config.batch_size,
                                config.batch_size, config.seed)
    result = top_hessian_eigenvalues(ld.model, batches, config.top, config.method, config.iters, config.seed,
                                     resolve_device(config.device))
    return {"model": str(path), "dataset": dataset, "top1_error": ld.meta.get("top1_error"),
            "sparsity": _sparsity(ld.model), **result}


# ------------------------------------------------------------------------------------------------- landscape


@dataclasses.dataclass
class LandscapeConfig:
    dataset: str | None = None
    data_dir: str | None = None
    grid: int = 8
    """Grid steps between A and B (α and β both move in steps of 1/grid)."""
    margin: float = 0.5
    beta_range: float = 1.0
    samples: int = 2048
    batch_size: int = 512
    support: str = "dense"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        from .landscape import SUPPORTS

        if self.grid < 1:
            raise ConfigError(f"--grid must be at least 1, got {self.grid}")
        if self.margin < 0 or self.beta_range < 0:
            raise ConfigError("--margin and --beta-range must be >= 0")
        if self.samples < 1 or self.batch_size < 1:
            raise ConfigError("--samples and --batch-size must be at least 1")
        if self.support not in SUPPORTS:
            raise ConfigError(f"--support must be one of {', '.join(SUPPORTS)}, got {self.support!r}")


def analyze_landscape(a_path: str | os.PathLike, b_path: str | os.PathLike, config: LandscapeConfig,
                      out: str | os.PathLike, labels: tuple[str, str] | None = None) -> dict:
    """Training loss on the plane through A, B and a random orthogonal direction (paper Fig. 2a); writes
    ``OUT/landscape.json`` and ``OUT/landscape.png``."""
    from ..train import resolve_device
    from . import plots
    from .landscape import loss_plane

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    pa, pb = resolve_model_path(a_path), resolve_model_path(b_path)
    la, lb = load_for_analysis(pa), load_for_analysis(pb)
    dataset = _dataset_of(config.dataset, la.meta, pa)
    batches, _ = sample_batches(dataset, config.data_dir, "train", config.samples, config.batch_size, config.seed)
    result = loss_plane(la.model, lb.model, batches, config.grid, config.margin, config.beta_range, config.seed,
                        config.support, resolve_device(config.device))
    names = labels or (pa.stem, pb.stem)
    out.mkdir(parents=True, exist_ok=True)
    png = plots.loss_plane_figure(result, out / "landscape.png", names)
    report = {"a": str(pa), "b": str(pb), "labels": list(names), "dataset": dataset,
              "config": dataclasses.asdict(config), **result, "files": {"png": str(png),
                                                                        "json": str(out / "landscape.json")}}
    _io.write_json(out / "landscape.json", report)
    return report
