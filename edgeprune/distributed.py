"""Data-parallel runs under ``torchrun``: process-group init/teardown, rank helpers, and the all-reduces that keep
every rank's SeReNe / LOBSTER step identical to one process over the same global batch.

Inactive (one process, no ``torch.distributed`` group) every helper is the identity, so the single-process path is
unchanged. Launch: ``torchrun --nproc_per_node N -m edgeprune compress ...`` (see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os

import torch
import torch.nn as nn

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
"""Process-group timeout: a collective that waits longer (a rank hung or died) fails instead of blocking forever.
Override with EDGEPRUNE_DIST_TIMEOUT (seconds)."""


def launched() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the run folder, checkpoints and logs."""
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    NCCL when the run uses CUDA, else Gloo. Ranks > 0 log warnings only and show no progress bars.

    Returns whether it started a group: False (doing nothing) when not launched with several processes or when a
    group already exists (its owner tears it down).
    """
    import torch.distributed as dist

    if not launched() or is_active():
        return False
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run with one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if ":" in device:
            raise ConfigError(f"under torchrun give --device cuda (rank r takes cuda:LOCAL_RANK), not {device}")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs here; "
                              "lower --nproc_per_node")
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU
    try:
        timeout = float(os.environ.get("EDGEPRUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ConfigError("EDGEPRUNE_DIST_TIMEOUT must be a number of seconds") from None
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout))
    if dist.get_rank() > 0:
        logging.getLogger("edgeprune").setLevel(logging.WARNING)
        os.environ["EDGEPRUNE_PROGRESS"] = "0"
    log.info("process group: %s, %d ranks (timeout %.0f s)", dist.get_backend(), dist.get_world_size(), timeout)
    return True


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "auto"):
    """``init_from_env`` for the duration of a command, torn down after it.

    A collective that fails because another rank died or hung (connection closed, timeout) becomes one
    :class:`~edgeprune.errors.EdgepruneError` line; torchrun then ends the job and reports the failed rank.
    """
    started = init_from_env(device)
    try:
        yield started
        if started:
            barrier()  # no rank tears the group down while another still finishes its last collective
    except Exception as exc:
        if started and _peer_failure(exc):
            from .errors import EdgepruneError

            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise EdgepruneError(
                f"rank {rank()}/{world_size()}: another process of this torchrun job failed or stopped responding "
                f"({type(exc).__name__}: {first}); torchrun's report names the failed rank; the last checkpoint "
                "(written by rank 0 after each epoch) is intact: continue with --resume (compress: --resume RUN_FOLDER)"
            ) from exc
        raise
    finally:
        if started:
            shutdown()


def _peer_failure(exc: BaseException) -> bool:
    """A communication error (peer gone, timeout), not a bug of this rank."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout",
                            "broken pipe", "peer"))


def barrier() -> None:
    import torch.distributed as dist

    if is_active():
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def all_reduce_mean_(tensors) -> None:
    """Average tensors in place across ranks (one flat all-reduce: sum, then ÷ world size)."""
    import torch.distributed as dist

    tensors = [t for t in tensors if t is not None]
    if not is_active() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                      for t in tensors])
    flat = flat.to(_comm_device(flat))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset: offset + n].view_as(t).to(t.device, t.dtype))
        offset += n


def wrap_ddp(model: nn.Module) -> nn.Module:
    """``model`` (already on its device) in DistributedDataParallel: backward leaves every gradient averaged over
    ranks, i.e. the gradient of the mean loss over the global batch (ranks hold equal-size shards).

    Buffers are not broadcast from rank 0 at every forward: each rank keeps its own BatchNorm running statistics
    and :func:`average_buffers_` averages them before evaluation (the average of the ranks' running means is the
    running mean of the global-batch means, which rank 0's alone is not)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def average_buffers_(model: nn.Module) -> None:
    """Mean over ranks of floating-point buffers (BatchNorm running statistics, which each rank updated from its own
    shard): every rank then evaluates (and rank 0 saves) the same network."""
    all_reduce_mean_([b for b in model.buffers() if b.is_floating_point()])


def average_values(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean over ranks of per-neuron (or per-parameter) tensors, e.g. SeReNe sensitivities (eq. 10 averaged over
    the global batch); returns new tensors, every rank the same."""
    if not is_active():
        return values
    out = {k: v.detach().clone() for k, v in values.items()}
    all_reduce_mean_([out[k] for k in sorted(out)])
    return out


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sums of Python numbers across ranks (float64), e.g. validation loss sums and counts."""
    import torch.distributed as dist

    if not is_active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    t = t.to(_comm_device(t))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (a list, rank order) on every rank; ``[obj]`` when inactive."""
    import torch.distributed as dist

    if not is_active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (decisions that depend on a rank's clock or signals, e.g. a
    time budget or Ctrl-C, must be taken by all ranks together or the others would wait forever)."""
    if not is_active():
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def check_agree(value, what: str) -> None:
    """Raise when ranks hold different values of something that must be identical (e.g. the threshold T)."""
    if not is_active():
        return
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values}; the run is no longer data-parallel-consistent")


def broadcast_parameters_(model: nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere (as DDP does at construction)."""
    import torch.distributed as dist

    if not is_active():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        buf = t.detach().to(_comm_device(t))
        dist.broadcast(buf, src=0)
        t.data.copy_(buf.to(t.device))


def shard(split):
    """This rank's part of an evaluation split: samples r, r+W, … with no padding (padding would count a sample
    twice in a mean); the sums over all ranks' shards are the sums over the split."""
    if not is_active():
        return split
    from .data import TensorSplit

    r, w = rank(), world_size()
    if isinstance(split, TensorSplit):
        return TensorSplit(split.x[r::w], split.y[r::w])
    return torch.utils.data.Subset(split, list(range(r, len(split), w)))


def per_rank_batch(batch_size: int) -> int:
    """The per-rank batch of a global ``batch_size`` (the global batch stays what one process would use)."""
    w = world_size()
    if batch_size % w:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the {w} processes; use a multiple of {w}")
    return batch_size // w


def evaluate(model: nn.Module, split, batch_size: int, device, description: str | None = None) -> dict:
    """:func:`edgeprune.train.evaluate` over ``split`` sharded across ranks: loss sums, correct counts and sample
    counts are all-reduced, so every rank gets the same {loss, accuracy, top1_error, n} of the whole split."""
    from .data import Batches
    from .train import evaluate as evaluate_local

    if not is_active():
        return evaluate_local(model, Batches(split, batch_size), device, description=description)
    average_buffers_(model)
    part = evaluate_local(model, Batches(shard(split), batch_size), device, description=description)
    n_local = part["n"]
    loss_sum = part["loss"] * n_local if n_local else 0.0
    correct = round(part["accuracy"] * n_local) if n_local else 0
    loss_sum, correct, n = all_reduce_sum([loss_sum, float(correct), float(n_local)])
    n = int(n)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "top1_error": float("nan"), "n": 0}
    acc = correct / n
    return {"loss": loss_sum / n, "accuracy": acc, "top1_error": 1.0 - acc, "n": n}


__all__ = [
    "DEFAULT_TIMEOUT_S", "all_reduce_mean_", "all_reduce_sum", "average_buffers_", "average_values", "barrier",
    "any_rank", "broadcast_parameters_", "check_agree", "evaluate", "gather_objects", "init_from_env", "is_active", "is_main", "launched",
    "per_rank_batch", "rank", "session", "shard", "shutdown", "world_size", "wrap_ddp",
]
