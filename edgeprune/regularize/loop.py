"""The SeReNe procedure (SeReNe Alg. 1–2; LOBSTER Sec. 4): regularize until the validation loss plateaus, threshold,
repeat while validation accuracy meets the target.

Regularization (Alg. 2) trains on U with the chosen update rule and keeps the best network by validation loss; after
PWE epochs without improvement the best network is checked against the target accuracy (Alg. 1 line 6), kept as the
latest good result, and thresholded (largest global T with loss ≤ (1 + TWT)·L̂; pruned parameters are pinned). The
loop ends when the accuracy falls below the target or the budget (epochs, minutes) is spent; it returns the last
network that met the target.

The whole loop state (model, optimizer, masks, best network, counters, RNG) is written atomically after every epoch
and every threshold step, so a killed run resumes to the same result.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _io
from .._progress import make_progress
from ..errors import CheckpointError, ConfigError
from ..latency import group_widths, latency_penalty_weights, neuron_latency_costs
from ..masks import apply_masks_, count_alive, full_masks, pin_
from ..threshold import find_threshold
from ..threshold.neurons import find_neuron_threshold, neuron_macs, taylor_scores, traceable_neuron_groups
from .config import CompressConfig
from .neurons import find_neurons, neuron_alive
from .update import Regularizer

log = logging.getLogger(__name__)

STATE_FORMAT = "edgeprune-serene-state"


@dataclasses.dataclass
class SereneResult:
    model: nn.Module
    """The last network that met the target (pruned parameters exactly zero)."""
    masks: dict[str, torch.Tensor]
    met_target: bool
    stop_reason: str
    epochs: int
    thresholds: list[float]
    baseline_val: dict
    final_val: dict
    target_accuracy: float
    seconds: float
    final_step: dict | None = None
    """What the last bisection under the accuracy target pruned (None when it did not run)."""


@dataclasses.dataclass
class Snapshot:
    """A network the loop keeps: its weights (CPU), validation metrics and, for the last good one, its masks."""

    state: dict[str, torch.Tensor]
    val: dict
    masks: dict[str, torch.Tensor] | None = None


@dataclasses.dataclass
class LoopState:
    """Everything Alg. 1 carries from one epoch or threshold step to the next (saved atomically after each)."""

    masks: dict[str, torch.Tensor]
    baseline_val: dict
    target: float
    """Validation accuracy the result must keep (baseline − target_drop)."""
    best: Snapshot
    """The best network of the current regularization cycle (lowest validation loss)."""
    initial: dict[str, torch.Tensor]
    epoch: int = 0
    cycle: int = 0
    since_best: int = 0
    pending_plateau: bool = False
    elapsed: float = 0.0
    rows: int = 0
    """Metrics rows emitted so far (a resumed run truncates metrics.jsonl to this)."""
    thresholds: list[float] = dataclasses.field(default_factory=list)
    last_good: Snapshot | None = None
    """The network kept at the last plateau that met the target, with its masks."""
    done: str | None = None
    """Why the loop stopped: target, max_epochs, max_minutes, nothing_pruned, latency_target; None while running."""

    def to_payload(self) -> dict:
        """Plain dicts and tensors only (``torch.load(weights_only=True)`` reads them back)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["masks"] = {k: v.cpu() for k, v in self.masks.items()}
        out["best"] = dataclasses.asdict(self.best)
        out["last_good"] = dataclasses.asdict(self.last_good) if self.last_good is not None else None
        return out

    @classmethod
    def from_payload(cls, data: dict) -> "LoopState":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["best"] = Snapshot(**data["best"])
        values["last_good"] = Snapshot(**data["last_good"]) if data.get("last_good") is not None else None
        return cls(**values)


def regularize_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, reg: Regularizer,
                     device: torch.device | str = "cpu", description: str = "regularize") -> dict:
    """One epoch of SGD on cross-entropy with the regularizer's update after each step (SeReNe eq. 15 / 23).

    Not :func:`edgeprune.train.train_epoch`: exact and LB differentiate the logits once more after the loss backward,
    which needs the autograd graph kept alive (``retain_graph``); train_epoch's hooks only see it after it is freed.
    ``model`` may be a DistributedDataParallel wrapper (its backward averages the gradients across ranks).
    """
    model.train()
    total_loss, correct, n = 0.0, 0, 0
    reg.set_capture(True)
    with make_progress() as progress:
        task = progress.add_task(description, total=len(batches), info="")
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward(retain_graph=reg.needs_graph)
            reg.after_backward(x, out)
            optimizer.step()
            reg.after_step(optimizer)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError("training loss is not finite; lower the learning rate (--lr) or --lambda")
            total_loss += value * y.numel()
            correct += int((out.detach().argmax(1) == y).sum())
            n += y.numel()
            progress.update(task, advance=1, info=f"loss {total_loss / n:.4f} acc {correct / n:.2%}")
    reg.set_capture(False)
    return {"loss": total_loss / max(n, 1), "accuracy": correct / max(n, 1)}


def _state_dict_cpu(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def neurons_alive(model: nn.Module, ng=None) -> dict[str, int]:
    ng = ng or find_neurons(model)
    return {nl.name: int(neuron_alive(nl).sum()) for nl in ng.layers}


def serene_(model: nn.Module, data, config: CompressConfig, state_path: str | Path | None = None,
            resume: bool = False, emit: Callable[[dict], None] | None = None,
            on_epoch: Callable[[int], None] | None = None) -> SereneResult:
    """Run SeReNe Alg. 1 on ``model`` (modified in place) with ``data`` (an :class:`edgeprune.data.DataBundle`).

    ``emit(row)`` receives one metrics row per epoch and per threshold step. ``on_epoch(epoch)`` runs after each
    saved epoch (tests inject interruptions there). With ``resume`` and an existing ``state_path`` the loop
    continues from the saved state.
    """
    from .. import distributed
    from ..data import Batches
    from ..train import resolve_device, seed_everything

    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    parallel = distributed.is_active()
    if parallel:
        distributed.broadcast_parameters_(model)
    ng = find_neurons(model)
    groups = traceable_neuron_groups(model, tuple(data.input_shape)) if config.prune in ("neurons", "both") else []
    score_batches = Batches(data.val, 500)  # the loss-based neuron score reads the validation split
    costs = neuron_macs(model, groups, tuple(data.input_shape)) if groups and config.neuron_cost == "macs" else None
    table, enough = latency_model(config, groups, tuple(data.input_shape))
    if table is not None and config.neuron_cost.startswith("latency:"):
        costs = lambda m: neuron_latency_costs(table, groups, m)  # noqa: E731 - marginal latency at today's widths
    # Under torchrun each rank takes its slice of every global batch (config.batch_size stays the global batch).
    train_b = Batches(data.train, distributed.per_rank_batch(config.batch_size), shuffle=True, seed=config.seed,
                      augment=data.augment, rank=distributed.rank(), world_size=distributed.world_size())
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    emit = (emit if distributed.is_main() else None) or (lambda row: None)

    def val_eval() -> dict:
        return distributed.evaluate(model, data.val, 1000, device)

    state_path = Path(state_path) if state_path is not None else None
    st: LoopState
    if resume and state_path is not None and state_path.exists():
        st, saved = _load_state(state_path, device, config)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        if st.done in ("max_epochs", "max_minutes"):
            st.done = None  # a larger budget continues a run that stopped on its budget
        log.info("resuming at epoch %d (cycle %d, %d threshold steps so far)", st.epoch, st.cycle,
                 len(st.thresholds))
    else:
        # Everything starts alive (BatchNorm's β is initialized to exactly zero: a from-scratch LOBSTER run must be
        # able to train it); zeros in the input are pruned by the first threshold step (|θ| = 0 ≤ T).
        masks = full_masks(model)
        base_val = val_eval()
        st = LoopState(masks=masks, baseline_val=base_val, target=base_val["accuracy"] - config.target_drop,
                       best=Snapshot(_state_dict_cpu(model), base_val), initial=_state_dict_cpu(model))
        log.info("baseline validation: loss %.4f, accuracy %.2f%%; target accuracy %.2f%%", base_val["loss"],
                 100 * base_val["accuracy"], 100 * st.target)
    masks = {k: v.to(device) for k, v in st.masks.items()}
    st.masks = masks
    t_start = time.time() - st.elapsed

    def save() -> None:
        st.elapsed = time.time() - t_start
        if state_path is not None and distributed.is_main():
            _save_state(state_path, st, model, optimizer, config)

    def row(kind: str, **values) -> None:
        nz = count_alive(masks)
        r = {"kind": kind, "epoch": st.epoch, "cycle": st.cycle,
             "params_total": sum(m.numel() for m in masks.values()), "params_alive": nz,
             "params_nonzero": int(sum(int(p.detach().ne(0).sum()) for p in model.parameters())),
             "neurons_alive": neurons_alive(model, ng), "seconds": round(time.time() - t_start, 2), **values}
        emit(r)
        st.rows += 1

    def budget_left() -> str | None:
        if st.epoch >= config.max_epochs:
            return "max_epochs"
        if config.max_minutes is not None and distributed.any_rank(time.time() - t_start >= 60 * config.max_minutes):
            return "max_minutes"
        return None

    reg_ctx = Regularizer(model, config.method, config.lam, masks, ng, config.class_chunk,
                          reduce_fn=distributed.average_values if parallel else None, exact_vjp=config.exact_vjp,
                          conv_sensitivity=config.conv_sensitivity)
    # Data-parallel: DDP averages the gradients in backward; the regularizer's hooks stay on the inner model.
    stepper = distributed.wrap_ddp(model) if parallel else model
    with reg_ctx as reg:
        while st.done is None:
            if st.pending_plateau:
                _plateau(st, model, optimizer, masks, val_eval, config, row, groups, score_batches, costs, enough)
                save()
                continue
            reason = budget_left()
            if reason is not None:
                st.done = reason
                break
            train_b.set_epoch(st.epoch)
            if table is not None and config.latency_penalty:
                reg.neuron_weights = latency_penalty_weights(table, groups, masks, model)
            tr = regularize_epoch(stepper, train_b, optimizer, reg, device,
                                  description=f"epoch {st.epoch + 1} (cycle {st.cycle + 1})")
            va = val_eval()
            st.epoch += 1
            if va["loss"] < st.best.val["loss"]:
                st.best = Snapshot(_state_dict_cpu(model), va)
                st.since_best = 0
            else:
                st.since_best += 1
            st.pending_plateau = st.since_best >= config.pwe
            row("epoch", train_loss=tr["loss"], train_accuracy=tr["accuracy"], val_loss=va["loss"],
                val_accuracy=va["accuracy"], best_val_loss=st.best.val["loss"], since_best=st.since_best)
            log.info("epoch %d (cycle %d): train loss %.4f  val loss %.4f acc %.2f%%  best %.4f  no gain %d/%d  "
                     "params alive %d", st.epoch, st.cycle + 1, tr["loss"], va["loss"], 100 * va["accuracy"],
                     st.best.val["loss"], st.since_best, config.pwe, count_alive(masks))
            save()
            if on_epoch is not None:
                on_epoch(st.epoch)
    return _finish(st, model, masks, val_eval, config, time.time() - t_start, groups, row, score_batches,
                   costs, enough)


def latency_model(config: CompressConfig, groups: list, input_shape: tuple | None = None):
    """(the run's latency table or None, the stop rule ``enough(widths)`` or None) — see docs/latency.md.

    The table must cover exactly the model's neuron groups (at ``input_shape`` when given); the target is
    ``target_latency`` ms, or the table's dense latency ÷ ``target_speedup``, and holds when the table's prediction
    for the widths is at or below it. A target below the prediction at every group's narrowest measured width is
    logged as a warning up front: the table cannot vouch for it, and the accuracy target will likely stop first."""
    if not groups or config.latency_table is None:
        return None, None
    from ..latency import LatencyTable, target_ms

    table = LatencyTable.load(config.latency_table)
    table.check_groups(groups, config.latency_table, input_shape=input_shape)
    target = target_ms(table, config.target_latency, config.target_speedup)
    if target is None:
        return table, None
    floor = table.min_predicted_ms()
    if target < floor:
        log.warning("latency target %.4f ms is below %.4f ms (%.2fx), the table's prediction with every group at its "
                    "narrowest measured width: it is likely unreachable; the accuracy target will stop pruning first",
                    target, floor, table.baseline_ms / floor)
    return table, lambda widths: table.predict(widths) <= target


def threshold_step(model: nn.Module, masks: dict, groups: list, evaluate: Callable[[nn.Module], dict],
                   admissible: Callable[[dict], bool], prune: str, neuron_score: str = "norm",
                   score_batches=None, costs: list | Callable | None = None, enough: Callable | None = None) -> dict:
    """One threshold step: the most pruning for which ``admissible(evaluate(pruned network))`` holds, over whole
    coupled neurons (``prune="neurons"``), single parameters by a global magnitude T (``"weights"``, SeReNe eq. 22)
    or both, neurons first and then weights on top of them under the same criterion.

    The model is left unchanged. Returns a dict: ``masks`` (the new masks), ``threshold`` (T, 0 when no weight was
    pruned), ``neurons_pruned``, ``neuron_score`` (the largest score pruned), ``per_layer`` (neurons pruned per root
    layer), ``metrics`` (of the chosen network; None when nothing was pruned) and ``evaluations``.
    ``score_batches`` (validation mini-batches) feed the loss-based ``"taylor"`` neuron score. ``costs`` may be
    a function of the masks (marginal latencies change with the widths); ``enough(widths)`` caps the neuron pruning
    at the first ranked prefix that reaches a latency target (:func:`find_neuron_threshold`)."""
    out = {"masks": masks, "threshold": 0.0, "neurons_pruned": 0, "neuron_score": 0.0, "per_layer": {},
           "metrics": None, "evaluations": 0}
    if prune in ("neurons", "both") and groups:
        scores = taylor_scores(model, groups, score_batches) if neuron_score == "taylor" else None
        res = find_neuron_threshold(model, masks, groups, evaluate, admissible, neuron_score, scores=scores,
                                    costs=costs(masks) if callable(costs) else costs, enough=enough)
        out.update(masks=res.masks, neurons_pruned=res.pruned, neuron_score=res.score, per_layer=res.per_group,
                   evaluations=res.evaluations, metrics=res.value)
    if prune in ("weights", "both"):
        params = dict(model.named_parameters())
        backup = {n: p.detach().clone() for n, p in params.items()}
        apply_masks_(model, out["masks"])
        try:
            t, new_masks, value, evals = find_threshold(model, out["masks"], evaluate, admissible=admissible)
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])
        out["evaluations"] += evals
        if t > 0:
            out.update(masks=new_masks, threshold=t, metrics=value)
    return out


def _plateau(st: LoopState, model, optimizer, masks, val_eval, config, row, groups, score_batches=None,
             costs=None, enough=None) -> None:
    """Alg. 1 lines 6–9 at a regularization plateau: check the target, keep, threshold, pin. A step that prunes
    nothing ends the run (LOBSTER Sec. 4.2: with TWT = 0 the loop would otherwise regularize until its budget)."""
    from .. import distributed

    st.pending_plateau = False
    model.load_state_dict(st.best.state)
    va = st.best.val
    if va["accuracy"] < st.target:
        log.info("validation accuracy %.2f%% fell below the target %.2f%%: stopping", 100 * va["accuracy"],
                 100 * st.target)
        st.done = "target"
        return
    st.last_good = Snapshot(st.best.state, va, {k: v.cpu().clone() for k, v in masks.items()})
    if enough is not None and enough(group_widths(groups, masks)):
        log.info("the predicted latency meets the target and the network meets the accuracy target: stopping")
        st.done = "latency_target"
        return
    bound = (1.0 + config.twt) * va["loss"]
    step = threshold_step(model, masks, groups, lambda m: val_eval(), lambda v: v["loss"] <= bound, config.prune,
                          config.neuron_score, score_batches, costs, enough)
    t = step["threshold"]
    distributed.check_agree(t + step["neurons_pruned"], "the threshold step")
    alive_before = count_alive(masks)
    for k in masks:
        masks[k].copy_(step["masks"][k])
    pin_(model, masks, optimizer)
    after = val_eval()
    st.cycle += 1
    st.thresholds.append(t)
    st.best = Snapshot(_state_dict_cpu(model), after)
    st.since_best = 0
    row("threshold", threshold=t, neurons_pruned=step["neurons_pruned"], neuron_score=step["neuron_score"],
        neurons_pruned_per_layer=step["per_layer"], bound=bound, val_loss=after["loss"],
        val_accuracy=after["accuracy"], evaluations=step["evaluations"])
    log.info("threshold %d (%s): T=%.4g, %d neurons  val loss %.4f (bound %.4f)  acc %.2f%%  params alive %d  "
             "neurons alive %s", st.cycle, config.prune, t, step["neurons_pruned"], after["loss"], bound,
             100 * after["accuracy"], count_alive(masks), list(neurons_alive(model).values()))
    if count_alive(masks) == alive_before:
        log.info("the threshold step pruned nothing: stopping (LOBSTER's rule)")
        st.done = "nothing_pruned"


def _finish(st: LoopState, model, masks, val_eval, config, seconds, groups=(), row=None,
            score_batches=None, costs=None, enough=None) -> SereneResult:
    """The most pruned network that meets the target.

    The starting point is the last network that met it: at a budget stop the current best when it still meets the
    target (it is the most pruned), else the one kept at the last plateau, else the input network. With
    ``config.final_step`` one more threshold step runs on it, constrained by the accuracy target itself (not by the
    TWT loss bound): a run stopped by its budget before any plateau, or right after a step that overshot, still
    returns a pruned network whenever one meeting the target exists."""
    best = st.best
    device = next(iter(masks.values())).device if masks else "cpu"
    if st.done != "target" and best.val["accuracy"] >= st.target:
        chosen = Snapshot(best.state, best.val, masks)
    elif st.last_good is not None:
        chosen = st.last_good
    elif config.final_step:
        chosen = Snapshot(st.initial, st.baseline_val, {k: torch.ones_like(v) for k, v in masks.items()})
    else:
        chosen = None
    final = None
    if chosen is None:
        log.warning("no pruned network met the target accuracy; returning the input network")
        model.load_state_dict(st.initial)
        met, final_masks = False, {k: v.clone() for k, v in masks.items()}
    else:
        model.load_state_dict(chosen.state)
        final_masks = {k: v.to(device).clone() for k, v in chosen.masks.items()}
        met = True
        if config.final_step:
            final = _final_step(st, model, final_masks, val_eval, config, groups, row, score_batches, costs, enough)
            met = final["met"]
    model.eval()
    result = SereneResult(model, final_masks, met, st.done, st.epoch, list(st.thresholds),
                          st.baseline_val, val_eval(), st.target, seconds)
    result.final_step = final
    return result


def _final_step(st: LoopState, model, masks, val_eval, config, groups, row, score_batches=None,
                costs=None, enough=None) -> dict:
    """A last threshold step under the accuracy target (see :func:`_finish`); ``masks`` is updated in place."""
    target = st.target
    alive_before = count_alive(masks)
    layers = [nl.layer for nl in find_neurons(model).layers]

    def evaluate(m: nn.Module) -> dict:
        # A layer left without a single weight disconnects the network (a constant output): never admissible,
        # even where the target is as low as chance (a baseline trained from scratch).
        return {**val_eval(), "connected": all(bool(layer.weight.detach().ne(0).any()) for layer in layers)}

    step = threshold_step(model, masks, groups, evaluate, lambda v: v["connected"] and v["accuracy"] >= target,
                          config.prune, config.neuron_score, score_batches, costs, enough)
    for k in masks:
        masks[k].copy_(step["masks"][k])
    pin_(model, masks)
    after = val_eval()
    info = {"threshold": step["threshold"], "neurons_pruned": step["neurons_pruned"],
            "params_pruned": alive_before - count_alive(masks), "val_accuracy": after["accuracy"],
            "val_loss": after["loss"], "evaluations": step["evaluations"], "met": after["accuracy"] >= target}
    if row is not None:
        row("final", params_alive=count_alive(masks), threshold=step["threshold"], neurons_pruned=step["neurons_pruned"],
            neurons_pruned_per_layer=step["per_layer"], target_accuracy=target, val_loss=after["loss"],
            val_accuracy=after["accuracy"], evaluations=step["evaluations"])
    log.info("final step under the accuracy target %.2f%%: %d neurons and %d parameters more pruned, val acc %.2f%%",
             100 * target, step["neurons_pruned"], info["params_pruned"], 100 * after["accuracy"])
    return info


def _save_state(path: Path, st: LoopState, model, optimizer, config: CompressConfig) -> None:
    payload = {"format": STATE_FORMAT, "config": config.comparable(), "model": _state_dict_cpu(model),
               "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), **st.to_payload()}
    buf = io.BytesIO()
    torch.save(payload, buf)
    _io.write_bytes(path, buf.getvalue())


def _load_state(path: Path, device, config: CompressConfig) -> tuple[LoopState, dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable resume state ({str(exc).splitlines()[0][:120]})") from None
    if payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a SeReNe resume state")
    saved, current = payload["config"], config.comparable()
    from .config import LEGACY_DEFAULTS

    defaults = {**{f.name: f.default for f in dataclasses.fields(CompressConfig)}, **LEGACY_DEFAULTS}
    diff = sorted(k for k in current if saved.get(k, defaults.get(k)) != current[k])  # fields added later: default
    if diff:
        raise ConfigError(f"the run was started with other options ({', '.join(diff)}); rerun with the same options "
                          "or use a new --out folder")
    return LoopState.from_payload(payload), payload


def saved_row_count(state_path: str | Path) -> int:
    """Metrics rows emitted up to the saved state (rows after it are replayed by a resumed run)."""
    payload = torch.load(state_path, map_location="cpu", weights_only=True)
    return int(payload.get("rows", 0))


__all__ = ["LoopState", "SereneResult", "Snapshot", "neurons_alive", "regularize_epoch", "saved_row_count", "serene_"]
