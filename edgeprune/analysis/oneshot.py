"""One-shot pruning from a trained baseline, the controls of the pruning-minima paper (Tartaglione et al., ICANN
2020, Sec. 5): prune by global magnitude to a target sparsity (or to the sparsity of a gradual run), then

* ``finetune``          keep the trained survivors and train them further (classic one-shot pruning, Sec. 2);
* ``rewind``            reset the survivors to their values at initialization and retrain (lottery ticket, Frankle &
                        Carbin; needs the baseline's ``init_state_dict``);
* ``reinit``            same mask, survivors drawn from a fresh random initialization (one per seed; Liu et al.);
* ``random-structure``  same number of survivors in every parameter tensor at random positions, fresh random
                        initialization (one structure per seed).

Training pins the mask: pruned parameters stay exactly zero (see :func:`edgeprune.masks.pinning_hooks`).
Each result is a checkpoint whose meta carries ``top1_error`` and ``sparsity``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import _io
from ..errors import CheckpointError, ConfigError
from ..masks import (Masks, apply_masks_, masks_from_zeros, pinning_hooks, prunable_parameters, random_structure_masks,
                     sparsity_masks, sparsity_of)

log = logging.getLogger(__name__)

MODES = ("finetune", "rewind", "reinit", "random-structure")
DEFAULT_LR = {"finetune": 0.01, "rewind": 0.05, "reinit": 0.05, "random-structure": 0.05}


@dataclasses.dataclass
class OneShotConfig:
    mode: str = "finetune"
    sparsity: float | None = None
    """Target fraction of pruned prunable parameters; or give ``match``."""
    match: str | None = None
    """A gradual run folder (its ``masked.pt``) or checkpoint whose sparsity to match."""
    match_mask: bool = False
    """Use the matched model's own mask instead of the baseline's magnitude mask (the paper's exact protocol)."""
    seeds: int = 1
    epochs: int = 2
    lr: float | None = None
    """SGD learning rate (cosine-annealed); default 0.01 for finetune, 0.05 when training from initialization."""
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_subset: int | None = None
    """Train on this many training samples (a fixed random subset) to save time."""
    dataset: str | None = None
    """Default: the dataset recorded in the baseline checkpoint."""
    data_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    """First seed; runs use seed, seed+1, …, seed+seeds-1."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.sparsity is None) == (self.match is None):
            raise ConfigError("give exactly one of --sparsity S and --match RUN_OR_CKPT")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in [0, 1) (fraction of pruned parameters), got {self.sparsity}")
        if self.match_mask and self.match is None:
            raise ConfigError("--match-mask needs --match RUN_OR_CKPT")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if self.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"--train-subset must be at least 1, got {self.train_subset}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]


def resolve_match(path: str | os.PathLike) -> Path:
    """A gradual run folder → its ``masked.pt``; a checkpoint file → itself."""
    p = Path(path)
    if p.is_dir():
        if (p / "masked.pt").exists():
            return p / "masked.pt"
        raise CheckpointError(f"{p} has no masked.pt; give a gradual run folder (edgeprune compress) or a checkpoint")
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or run folder")
    return p


REINIT_SEED_OFFSET = 1_000_003
"""Fresh initializations use seed + this offset: `edgeprune train --seed S` draws its initial weights right after
``torch.manual_seed(S)``, so re-initializing with the plain seed would reproduce the baseline's own init."""


def fresh_model(arch: dict, seed: int) -> nn.Module:
    """The architecture at a new random initialization (RNG seeded with ``seed + REINIT_SEED_OFFSET``), without
    disturbing the global RNG."""
    from ..checkpoint import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + REINIT_SEED_OFFSET)
        return build_model(arch)


def initial_state(extra: dict, path: str) -> dict:
    state = extra.get("init_state_dict")
    if not state:
        raise CheckpointError(
            f"{path} carries no init_state_dict (weights at initialization), so survivors cannot be rewound; "
            "use a baseline trained by `edgeprune train`, or --mode reinit"
        )
    return state


def prepare_model(baseline: nn.Module, arch: dict, masks: Masks, mode: str, seed: int = 0,
                  init_state: dict | None = None) -> tuple[nn.Module, Masks]:
    """The masked starting point of one one-shot run (weights only; no training).

    ``finetune`` starts from the trained baseline, ``rewind`` from ``init_state`` (every parameter and buffer, as
    the lottery ticket does), ``reinit`` and ``random-structure`` from a fresh initialization drawn with ``seed``;
    ``random-structure`` also replaces the mask by a random one with the same per-tensor counts.
    Returns the model (a new module; ``baseline`` is untouched) and the mask it carries.
    """
    import copy

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "finetune":
        model = copy.deepcopy(baseline)
    elif mode == "rewind":
        if init_state is None:
            raise CheckpointError("rewinding needs the weights at initialization (init_state_dict)")
        model = copy.deepcopy(baseline)
        model.load_state_dict(init_state)
    else:
        model = fresh_model(arch, seed)
        model.to(next(baseline.parameters()).device)
    if mode == "random-structure":
        masks = random_structure_masks(masks, seed)
    apply_masks_(model, masks)
    model.edgeprune_arch = arch  # type: ignore[assignment]
    return model, masks


def train_masked(model: nn.Module, masks: Masks, train_batches, epochs: int, lr: float, momentum: float = 0.9,
                 weight_decay: float = 5e-4, device: torch.device | str = "cpu", description: str = "train",
                 val_batches=None) -> list[dict]:
    """SGD with a cosine schedule where pruned parameters stay exactly zero. Returns per-epoch history."""
    from ..train import evaluate, train_epoch

    model.to(device)
    if epochs == 0:
        return []
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    before, after = pinning_hooks(model, masks, optimizer)
    history = []
    for epoch in range(epochs):
        if hasattr(train_batches, "set_epoch"):
            train_batches.set_epoch(epoch)
        tr = train_epoch(model, train_batches, optimizer, device, before_step=before, after_step=after,
                         description=f"{description} {epoch + 1}/{epochs}")
        scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"]}
        if val_batches is not None:
            va = evaluate(model, val_batches, device)
            row.update(val_loss=va["loss"], val_accuracy=va["accuracy"])
        history.append(row)
        log.info("%s epoch %d/%d  train loss %.4f acc %.2f%%", description, epoch + 1, epochs, tr["loss"],
                 100 * tr["accuracy"])
    return history


def oneshot(baseline_path: str | os.PathLike, config: OneShotConfig, out: str | os.PathLike) -> dict:
    """Run ``config.seeds`` one-shot runs of ``config.mode`` from the baseline; write ``OUT/<mode>-seed<k>.pt`` and
    ``OUT/oneshot-<mode>.json``. Returns the summary written to the JSON."""
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..data import Batches, load_dataset
    from ..train import evaluate, resolve_device

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    device = resolve_device(config.device)
    base = load_checkpoint(baseline_path)
    arch = base.arch
    init_state = initial_state(base.extra, str(baseline_path)) if config.mode == "rewind" else None
    dataset = config.dataset or base.meta.get("dataset")
    if not dataset:
        raise ConfigError(f"{baseline_path} does not record its dataset; pass --dataset")

    if config.match is not None:
        match_path = resolve_match(config.match)
        matched = load_checkpoint(match_path)
        match_masks = masks_from_zeros(matched.model)
        target = sparsity_of(match_masks)
        base_params = prunable_parameters(base.model)
        if set(match_masks) != set(base_params) or any(
                tuple(match_masks[n].shape) != tuple(p.shape) for n, p in base_params.items()):
            raise CheckpointError(f"{match_path} does not have the baseline's architecture (after surgery?); "
                                  "give the gradual run's masked.pt, which keeps the original shapes")
        masks = match_masks if config.match_mask else sparsity_masks(base.model, target)
        source = {"match": str(match_path), "match_sparsity": target, "match_mask": config.match_mask,
                  "match_top1_error": matched.meta.get("top1_error")}
    else:
        target = float(config.sparsity)
        masks = sparsity_masks(base.model, target)
        source = {}

    data = load_dataset(dataset, config.data_dir, seed=int(base.meta.get("seed", 0)),
                        options=base.meta.get("data_options"))
    train_split = data.train
    if config.train_subset is not None and config.train_subset < len(train_split):
        g = torch.Generator().manual_seed(config.seed)
        train_split = train_split.subset(torch.randperm(len(train_split), generator=g)[: config.train_subset])
    test_b = Batches(data.test, 512)

    out.mkdir(parents=True, exist_ok=True)
    results = []
    base.model.to(device)
    for k in range(config.seeds):
        seed = config.seed + k
        t0 = time.time()
        model, run_masks = prepare_model(base.model, arch, masks, config.mode, seed, init_state)
        train_b = Batches(train_split, config.batch_size, shuffle=True, seed=seed, augment=data.augment)
        history = train_masked(model, run_masks, train_b, config.epochs, config.learning_rate, config.momentum,
                               config.weight_decay, device, description=f"{config.mode} seed {seed}")
        te = evaluate(model, test_b, device, description="test")
        total = sum(p.numel() for p in model.parameters())
        nonzero = int(sum(int(p.detach().ne(0).sum()) for p in model.parameters()))
        meta = {
            "dataset": dataset, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "seed": seed, "top1_error": te["top1_error"], "test_accuracy": te["accuracy"],
            "sparsity": sparsity_of(run_masks), "target_sparsity": target,
            "compression_ratio": total / max(nonzero, 1), "params_total": total, "params_nonzero": nonzero,
            "oneshot": {"mode": config.mode, "baseline": str(baseline_path), **source,
                        "config": dataclasses.asdict(config), "lr": config.learning_rate},
            "history": history, "seconds": round(time.time() - t0, 1),
        }
        path = out / f"{config.mode}-seed{seed}.pt"
        save_checkpoint(path, model.cpu(), meta=meta, arch=arch,
                        extra={"masks": {n: m.clone() for n, m in run_masks.items()}})
        log.info("%s: top-1 error %.2f%% at sparsity %.2f%%", path, 100 * te["top1_error"], 100 * meta["sparsity"])
        results.append({"path": str(path), "seed": seed, "top1_error": te["top1_error"], "sparsity": meta["sparsity"],
                        "compression_ratio": meta["compression_ratio"], "seconds": meta["seconds"]})
    summary = {"mode": config.mode, "baseline": str(baseline_path), "baseline_top1_error": base.meta.get("top1_error"),
               "dataset": dataset, "target_sparsity": target, **source, "config": dataclasses.asdict(config),
               "runs": results}
    errors = [r["top1_error"] for r in results]
    summary["top1_error_mean"] = sum(errors) / len(errors)
    summary["top1_error_min"] = min(errors)
    _io.write_json(out / f"oneshot-{config.mode}.json", summary)
    return summary
