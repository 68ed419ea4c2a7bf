"""Plain supervised training: the epoch loop, evaluation, and `edgeprune train` (baseline models).

Stages that train (SeReNe's regularization, one-shot fine-tuning) reuse :func:`train_epoch` and :func:`evaluate`
with their own per-step hooks.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _io
from ._progress import make_progress
from .errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (validated)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available here; use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device | str = "cpu", description: str | None = None) -> dict:
    """Mean cross-entropy loss and top-1 accuracy over ``batches`` (model left in eval mode)."""
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    with make_progress() as progress:
        task = progress.add_task(description or "evaluate", total=len(batches), info="") if description else None
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            total_loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += y.numel()
            if task is not None:
                progress.advance(task)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "top1_error": float("nan"), "n": 0}
    acc = correct / n
    return {"loss": total_loss / n, "accuracy": acc, "top1_error": 1.0 - acc, "n": n}


def train_epoch(
    model: nn.Module,
    batches,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
    before_step: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    after_step: Callable[[], None] | None = None,
    description: str = "train",
) -> dict:
    """One epoch of SGD on cross-entropy. ``before_step(model, x, y, logits)`` runs after backward and before the
    optimizer step (gradients are in place); ``after_step()`` runs after it (e.g. regularization, pinning)."""
    model.train()
    total_loss, correct, n = 0.0, 0, 0
    with make_progress() as progress:
        task = progress.add_task(description, total=len(batches), info="")
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            if before_step is not None:
                before_step(model, x, y, out)
            optimizer.step()
            if after_step is not None:
                after_step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError("training loss is not finite; lower the learning rate (--lr)")
            total_loss += loss_value * y.numel()
            correct += int((out.detach().argmax(1) == y).sum())
            n += y.numel()
            progress.update(task, advance=1, info=f"loss {total_loss / n:.4f} acc {correct / n:.2%}")
    return {"loss": total_loss / max(n, 1), "accuracy": correct / max(n, 1)}


@dataclasses.dataclass
class TrainConfig:
    arch: str = "lenet5"
    dataset: str = "fashion-mnist"
    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    val_fraction: float = 0.1
    download: bool = False
    arch_kwargs: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of the architecture's builder (``--arch-kwargs``); override the ones taken from the data."""
    data_options: dict = dataclasses.field(default_factory=dict)
    """Image size, channels, resize policy, normalization (see edgeprune.data.options.ImageOptions)."""
    weights: str | None = None
    """Initial weights from a local file (safetensors or a state_dict), e.g. a timm or torchvision model's."""
    workers: int | None = None
    """Image-folder decoding processes (None: automatic)."""

    def __post_init__(self) -> None:
        if not isinstance(self.arch_kwargs, dict):
            raise ConfigError(f"--arch-kwargs must be a JSON object like '{{\"width\": 32}}', got {self.arch_kwargs!r}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"validation fraction must be in (0, 1), got {self.val_fraction}")


class _Interrupt:
    """Turn the first Ctrl-C into a flag checked between epochs (a second one aborts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("interrupt: finishing this epoch and saving; press Ctrl-C again to abort now")

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(config: TrainConfig, out: str | os.PathLike, resume: bool = False) -> dict:
    """Train ``config.arch`` on ``config.dataset`` and save the best-on-validation model to ``out``.

    The state after every epoch goes to ``OUT.resume.pt`` (atomically) so ``resume=True`` continues a killed run
    with the same result; it is removed when training completes. Under torchrun (an initialized process group, see
    :mod:`edgeprune.distributed`) the model trains in DistributedDataParallel over the ranks' slices of every global
    batch of ``config.batch_size``; rank 0 alone writes files.
    """
    from . import distributed
    from .checkpoint import save_checkpoint
    from .compat import check_model_data
    from .data import Batches, load_dataset
    from .models import create_model, trust_code
    from .models._external import is_reference

    out = Path(out)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if is_reference(config.arch):
        trust_code(config.arch)  # the user named this code on the command line
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed, val_fraction=config.val_fraction,
                        download=config.download, options=config.data_options, workers=config.workers)
    kwargs = {**_data_kwargs(config.arch, data.input_shape, data.num_classes), **config.arch_kwargs}
    model = create_model(config.arch, **kwargs)
    if config.weights:
        from .checkpoint import load_weights

        report = load_weights(model, config.weights)
        log.info("initial weights from %s: %d tensors loaded%s", config.weights, report["loaded"],
                 f", {', '.join(report['skipped'])} kept at initialization (shape differs: another class count)"
                 if report["skipped"] else "")
    check_model_data(model, data, model.edgeprune_arch)
    init_state = copy.deepcopy(model.state_dict())
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    train_b = Batches(data.train, distributed.per_rank_batch(config.batch_size), shuffle=True, seed=config.seed,
                      augment=data.augment, rank=distributed.rank(), world_size=distributed.world_size())
    resume_path = out.with_name(out.name + ".resume.pt")
    start, best, history = 0, None, []
    if resume and resume_path.exists():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        if state["config"] != dataclasses.asdict(config):
            raise ConfigError(f"{resume_path} was written with other options; rerun them or delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, history = state["epoch"], state["best"], state["history"]
        init_state = state["init"]
        log.info("resuming %s at epoch %d", out, start + 1)
    elif resume:
        log.info("no resume state at %s: starting from scratch", resume_path)
    stepper = distributed.wrap_ddp(model) if distributed.is_active() else model

    t0 = time.time()
    with _Interrupt() as stop:
        for epoch in range(start, config.epochs):
            train_b.set_epoch(epoch)
            tr = train_epoch(stepper, train_b, optimizer, device, description=f"epoch {epoch + 1}/{config.epochs}")
            scheduler.step()
            va = distributed.evaluate(model, data.val, 512, device)
            row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                   "val_loss": va["loss"], "val_accuracy": va["accuracy"], "lr": optimizer.param_groups[0]["lr"],
                   "seconds": time.time() - t0}
            history.append(row)
            log.info("epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%", epoch + 1, config.epochs,
                     tr["loss"], 100 * tr["accuracy"], va["loss"], 100 * va["accuracy"])
            if best is None or va["accuracy"] > best["val_accuracy"]:
                best = {"epoch": epoch + 1, "val_accuracy": va["accuracy"], "val_loss": va["loss"],
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            if distributed.is_main():
                _save_resume(resume_path, model, optimizer, scheduler, epoch + 1, best, history, init_state, config)
            if distributed.any_rank(stop.requested):
                raise KeyboardInterrupt
    model.load_state_dict(best["state"])
    te = distributed.evaluate(model, data.test, 512, device, description="test")
    meta = {
        "dataset": config.dataset,
        "data_options": data.options,
        "classes": data.classes,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "seed": config.seed,
        "train_config": dataclasses.asdict(config),
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": te["accuracy"],
        "top1_error": te["top1_error"],
        "train_seconds": round(time.time() - t0, 1),
        "history": history,
    }
    if distributed.is_main():
        save_checkpoint(out, model.cpu(), meta=meta, extra={"init_state_dict": init_state})
        resume_path.unlink(missing_ok=True)
    return {"path": str(out), **{k: meta[k] for k in ("best_epoch", "val_accuracy", "test_accuracy", "top1_error",
                                                        "train_seconds")}}


def _data_kwargs(arch: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """Match the model to the dataset where its builder takes the argument by name: class count, input channels
    (``in_channels``, timm's ``in_chans``) or input features."""
    import inspect

    from .models import get_entry, normalize_arch

    entry = get_entry(normalize_arch(arch)["name"])
    params = inspect.signature(entry.builder).parameters
    out: dict = {}
    if "num_classes" in params:
        out["num_classes"] = num_classes
    if len(input_shape) == 3 and "in_channels" in params:
        out["in_channels"] = input_shape[0]
    elif len(input_shape) == 3 and "in_chans" in params:
        out["in_chans"] = input_shape[0]
    elif "in_features" in params:
        out["in_features"] = math.prod(input_shape)
    return out


def _save_resume(path, model, optimizer, scheduler, epoch, best, history, init_state, config) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "best": best, "history": history, "init": init_state,
                "config": dataclasses.asdict(config)}, buf)
    _io.write_bytes(path, buf.getvalue())
