"""``surgery``: physically remove dead neurons and filters, giving a smaller dense model that computes the same.

Zeros in a dense tensor save nothing on a phone; a slim model does. Steps: probe the masked model → group coupled
channels (torch-pruning) → keep only channels dead in every member (and whole groups of grouped convs) → fold
constants into consumer biases → remove → verify every output of slim against masked (shapes; max |Δ| ≤
tolerance · max |output|) → record the steps as a replayable arch spec.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time

import torch
import torch.nn as nn

from ..errors import ConfigError, SurgeryError
from .parts import TraceError
from .verify import VerificationError

log = logging.getLogger(__name__)

PROBE_BATCH = 2


@dataclasses.dataclass
class SurgeryConfig:
    """Options of ``edgeprune surgery`` (validated when built)."""

    round_channels: int | None = None
    tolerance: float = 1e-5
    probe_samples: int = 64
    """Real samples (from the validation split) added to the probe and the verification, when a dataset is given."""

    def __post_init__(self):
        if self.round_channels is not None and (isinstance(self.round_channels, bool)
                                                or not isinstance(self.round_channels, int) or self.round_channels < 1):
            raise ConfigError(f"round_channels must be a positive integer (e.g. 8), got {self.round_channels!r}")
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):
            raise ConfigError(f"tolerance must be in (0, 1), e.g. 1e-5, got {self.tolerance!r}")
        if not isinstance(self.probe_samples, int) or self.probe_samples < 1:
            raise ConfigError(f"probe_samples must be a positive integer, got {self.probe_samples!r}")


@dataclasses.dataclass
class SurgeryResult:
    model: nn.Module
    """The slim model (eval mode), carrying its arch spec with a "surgery" section when the input had one."""
    report: dict
    removed: dict[str, list[int]]
    """Layer name → original output-channel indices removed (conv / linear / BN layers)."""


def _random_batches(shape, device, dtype, seed: int, probe_batch) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn((PROBE_BATCH, *shape), generator=g),
               torch.randn((PROBE_BATCH, *shape), generator=g) * 3.0 + 0.5]
    batches = [b.to(device, dtype) for b in batches]
    if probe_batch is not None:
        x = probe_batch[0] if isinstance(probe_batch, (tuple, list)) else probe_batch
        if tuple(x.shape[1:]) != tuple(shape):
            raise ConfigError(f"probe batch has sample shape {tuple(x.shape[1:])}, the model takes {tuple(shape)}")
        batches.append(x.to(device, dtype))
    return batches


def _out_size(m: nn.Module) -> int | None:
    for attr in ("out_features", "out_channels", "num_features", "num_parameters"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return None


def _slim_record(masked: nn.Module, work: nn.Module, shape, kept: dict[str, list[int]], spec: dict,
                 **head) -> tuple[dict[str, list[int]], dict]:
    """What every surgery reports alike: the removed indices per layer, the slim model's arch spec (the masked
    model's plus ``spec``), and the layer table and totals before and after; ``head`` leads the report."""
    from ..summary import summarize
    from .replay import merge_specs

    removed = {n: sorted(set(range(_out_size(masked.get_submodule(n)))) - set(k)) for n, k in kept.items()}
    arch = getattr(masked, "edgeprune_arch", None)
    if arch is not None:
        work.edgeprune_arch = {**copy.deepcopy(arch), "surgery": merge_specs(arch.get("surgery"), spec)}
    before, after = summarize(masked, shape), summarize(work, shape)
    return removed, {
        "input_shape": list(shape),
        **head,
        "layers": _layer_table(before, after),
        "params_before": before.params_total,
        "params_after": after.params_total,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "neurons_before": before.neurons,
        "neurons_after": after.neurons,
    }


def _track_removal(group, names: dict, kept: dict[str, list[int]]) -> None:
    """Keep, per layer, the original indices of its surviving output channels (for reports and verification)."""
    import torch_pruning as tp

    t = tp.ops.OPTYPE
    for it in group.items:
        node = it.dep.target
        if node.type not in (t.CONV, t.LINEAR, t.DEPTHWISE_CONV, t.BN, t.PRELU):
            continue
        if it.dep.handler.__name__ != "prune_out_channels":
            continue
        name = names[node.module]
        cur = kept.get(name)
        if cur is None:
            cur = list(range(_out_size(node.module)))
        drop = set(int(i) for i in it.idxs)
        kept[name] = [v for i, v in enumerate(cur) if i not in drop]


def _layer_table(before, after) -> list[dict]:
    rows = {r.name: r for r in after.layers}
    out = []
    for r in before.layers:
        a = rows.get(r.name, r)
        out.append({"name": r.name, "kind": r.kind, "neurons_before": r.neurons, "neurons_after": a.neurons,
                    "params_before": r.params, "params_after": a.params, "macs_before": r.macs,
                    "macs_after": a.macs})
    return out


def surgery(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    round_channels: int | None = None,
    probe_batch: torch.Tensor | None = None,
    tolerance: float = 1e-5,
) -> SurgeryResult:
    """Remove every channel that is provably dead (or constant and foldable) from a copy of ``model``.

    ``round_channels=N`` keeps a few extra dead channels so each cut layer's width is a multiple of N (ONNX Runtime
    runs multiples of 8 much faster). ``probe_batch`` (real inputs) joins the random probe and verification inputs.
    A grouped conv (ResNeXt, RegNet) loses whole groups only; channels of partly dead groups stay, with the reason
    in ``report["kept"]`` and ``report["grouped_convs"]``. Channels that reach a model output directly are never
    removed. Raises SurgeryError when any output of the slim model differs in shape, or in value by more than
    ``tolerance`` · max |that output|. The input model is not modified.
    """
    SurgeryConfig(round_channels=round_channels, tolerance=tolerance)
    shape = tuple(int(s) for s in input_shape)
    t0 = time.perf_counter()
    modes = [(m, m.training) for m in model.modules()]
    try:
        # The input serves as the masked reference: read only, in eval mode for the duration.
        try:
            return _surgery(model.eval(), shape, round_channels, probe_batch, tolerance, t0)
        except (TraceError, VerificationError) as exc:
            # Untraceable (e.g. ShuffleNetV2's channel shuffle), or traced wrongly (the cut did not verify, e.g.
            # GhostNet's slice of a concatenation): cut the parts that trace and verify, keep the rest dense.
            return _surgery_partial(model.eval(), shape, round_channels, probe_batch, tolerance, t0, str(exc))
    finally:
        for m, training in modes:
            m.training = training


def _surgery(masked: nn.Module, shape: tuple[int, ...], round_channels: int | None, probe_batch, tolerance: float,
             t0: float, fixed_roots: frozenset[str] = frozenset()) -> SurgeryResult:
    from .._progress import make_progress
    from .detect import CONSUMERS, probe_inputs
    from .fold import apply_folds
    from .plan import is_grouped_conv, plan_group, reconcile_grouped, round_plan, zero_inputs_of
    from .replay import CUT_GROUPS, build_graph, cut_conv_groups, output_nodes, prune_group, \
        pruning_group, step_name
    from .verify import verify

    work = copy.deepcopy(masked).eval()
    param = next(work.parameters(), None)
    if param is None:
        raise SurgeryError("the model has no parameters; nothing to cut")
    probe = _random_batches(shape, param.device, param.dtype, 1234, probe_batch)
    check = _random_batches(shape, param.device, param.dtype, 4321, probe_batch)

    names = {m: n for n, m in work.named_modules()}
    consumers = {n: m for n, m in work.named_modules() if isinstance(m, CONSUMERS)}
    try:
        stats, order = probe_inputs(work, consumers, probe)
    except RuntimeError as exc:
        raise SurgeryError(f"the model does not run on input of shape {shape} "
                           f"({str(exc).splitlines()[0][:160]}); give the input shape it was trained with") from None
    if not order:
        raise SurgeryError("the model has no conv or linear layer; nothing to cut")
    output_layer = order[-1]
    dg = build_graph(work, shape)
    t_graph = time.perf_counter()

    import torch_pruning as tp

    outputs = output_nodes(dg)
    groups, plans = [], []
    with make_progress() as progress:
        task = progress.add_task("surgery: grouping", total=None, info="")
        ignored = [work.get_submodule(output_layer)] + [work.get_submodule(n) for n in sorted(fixed_roots)]
        for group in dg.get_all_groups(ignored_layers=ignored,
                                       root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
            groups.append(group)
            try:
                plans.append(plan_group(group, names, stats, outputs))
            except (IndexError, KeyError) as exc:
                # The traced indices do not fit the layers (a reshape torch-pruning misread): not a usable graph.
                at = names.get(group.items[0].dep.target.module, "?")
                raise TraceError(f"torch-pruning traced inconsistent channel indices at {at} "
                                 f"({type(exc).__name__}: {str(exc)[:120]})") from None
            progress.advance(task)
    # A grouped conv whose whole input group is proven zero emits its bias there: plan the groups it feeds again
    # with that evidence, until no new zero input appears (each pass can only add evidence downstream).
    zero: dict[str, set[int]] = {}
    while True:
        found = zero_inputs_of(plans, stats)
        if found == zero:
            break
        zero = found
        for k, plan in enumerate(plans):
            if any(side == "out" and conv in zero for conv, side, _ in plan.grouped):
                plans[k] = plan_group(groups[k], names, stats, outputs, zero)
    if round_channels:
        # Rounding keeps single channels, which a grouped conv cannot lose one at a time: its groups stay unrounded.
        for plan in plans:
            if not plan.grouped:
                round_plan(plan, round_channels)
    grouped = {n: m for n, m in work.named_modules() if is_grouped_conv(m)}
    cuts = reconcile_grouped(plans, grouped)

    folds: dict[str, dict[int, float]] = {}
    for plan in plans:
        for r in plan.remove:
            for consumer, idx, value in plan.folds.get(r, []):
                folds.setdefault(consumer, {})[idx] = value
    bias_added = apply_folds(work, folds)

    kept: dict[str, list[int]] = {}
    steps = []
    todo = [p for p in plans if p.remove]
    with make_progress() as progress:
        task = progress.add_task("surgery: removing", total=len(todo), info="")
        for plan in todo:
            layer = work.get_submodule(plan.root)
            group = pruning_group(dg, layer, plan.remove)
            if not dg.check_pruning_group(group):
                raise SurgeryError(f"removing {len(plan.remove)} channels of {plan.root} would empty a coupled layer; "
                                   "report this with the model")
            fn = step_name(layer)
            _track_removal(group, names, kept)
            prune_group(group)
            steps.append([plan.root, fn, list(plan.remove)])
            progress.update(task, advance=1, info=plan.root)
    # torch-pruning skipped the grouped convs' own weights; whole groups leave them now (original group indices).
    for name, cut in cuts.items():
        if cut.cut:
            cut_conv_groups(work.get_submodule(name), cut.cut)
            steps.append([name, CUT_GROUPS, list(cut.cut)])
    work.eval()
    verification = verify(masked, work, check, kept, tolerance)

    version = 2 if any(step[1] == CUT_GROUPS for step in steps) else 1
    spec = {"version": version, "input_shape": list(shape), "bias_added": bias_added, "steps": steps}
    removed, report = _slim_record(masked, work, shape, kept, spec, round_channels=round_channels,
                                   real_samples=int(len(probe[2])) if len(probe) > 2 else 0,
                                   output_layer=output_layer)
    report = {
        **report,
        "channels_removed": sum(len(p.remove) for p in plans),
        "constant_channels_folded": sum(1 for p in plans for r in p.remove if r in p.folds),
        "folded": {c: len(v) for c, v in folds.items()},
        "bias_added": bias_added,
        "kept": [{"layer": p.root, "channel": r, "reason": why} for p in plans for r, why in sorted(p.kept.items())],
        "skipped_groups": [{"layer": p.root, "reason": p.skipped} for p in plans if p.skipped],
        "grouped_convs": [{"layer": c.name, "groups_before": c.groups, "groups_after": c.groups - len(c.cut),
                           "groups_cut": c.cut, "groups_kept_partly_dead": {str(j): why for j, why in
                                                                            sorted(c.partial.items())}}
                          for c in cuts.values()],
        "verification": verification,
        "steps": len(steps),
        "seconds": round(time.perf_counter() - t0, 3),
        "graph_seconds": round(t_graph - t0, 3),
    }
    log.info("surgery: %d channels removed, params %d → %d, max |Δ| %.3g", report["channels_removed"],
             report["params_before"], report["params_after"], verification["max_abs_diff"])
    return SurgeryResult(work, report, removed)


def _cut_part(module: nn.Module, shape: tuple[int, ...], real, round_channels, tolerance: float) -> SurgeryResult:
    """Traced surgery of one part of a model; its steps come back as the part's arch spec."""
    from .parts import input_fed_depthwise

    param = next(module.parameters())
    fixed = input_fed_depthwise(module.eval(), torch.zeros((1, *shape), dtype=param.dtype, device=param.device))
    module.edgeprune_arch = {"name": "part", "kwargs": {}}
    try:
        return _surgery(module.eval(), shape, round_channels, real, tolerance, time.perf_counter(), frozenset(fixed))
    finally:
        del module.edgeprune_arch


def _surgery_partial(masked: nn.Module, shape: tuple[int, ...], round_channels: int | None, probe_batch,
                     tolerance: float, t0: float, reason: str) -> SurgeryResult:
    from .parts import surgery_by_parts

    param = next(masked.parameters(), None)
    if param is None:
        raise SurgeryError("the model has no parameters; nothing to cut")
    probe = _random_batches(shape, param.device, param.dtype, 1234, None)
    check = _random_batches(shape, param.device, param.dtype, 4321, None)
    real = _random_batches(shape, param.device, param.dtype, 0, probe_batch)[2] if probe_batch is not None else None
    work, parts, extra, kept = surgery_by_parts(masked, shape, probe, check, real, round_channels, tolerance, reason,
                                                _cut_part)
    spec = {"version": 3, "input_shape": list(shape), "bias_added": [], "steps": [], "parts": parts}
    removed, report = _slim_record(masked, work, shape, kept, spec, round_channels=round_channels,
                                   real_samples=int(len(real)) if real is not None else 0, output_layer=None)
    report = {
        **report,
        "folded": {},
        **extra,
        "seconds": round(time.perf_counter() - t0, 3),
        "graph_seconds": None,
    }
    log.info("surgery by parts: %d channels removed in %d parts, params %d → %d, max |Δ| %.3g",
             report["channels_removed"], len(parts), report["params_before"], report["params_after"],
             report["verification"]["max_abs_diff"])
    return SurgeryResult(work, report, removed)


def surgery_checkpoint(
    masked_path: str | os.PathLike,
    out_path: str | os.PathLike,
    round_channels: int | None = None,
    probe_batch: torch.Tensor | None = None,
    tolerance: float = 1e-5,
) -> SurgeryResult:
    """Load a masked checkpoint, cut it, and save the slim model (atomic; arch spec + state_dict, weights-only),
    with the input's meta plus ``surgery_report``. Extra entries of the input (e.g. ``init_state_dict``) describe
    the dense shapes and are not carried over."""
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..models import input_shape_of

    loaded = load_checkpoint(masked_path)
    if loaded.arch is None:
        raise SurgeryError(f"{masked_path} carries no architecture spec; save it with edgeprune.checkpoint first")
    shape = loaded.meta.get("input_shape") or input_shape_of(
        {"name": loaded.arch["name"], "kwargs": loaded.arch.get("kwargs", {})})
    result = surgery(loaded.model, tuple(shape), round_channels=round_channels, probe_batch=probe_batch,
                     tolerance=tolerance)
    meta = {k: v for k, v in loaded.meta.items() if k != "versions"}
    meta["input_shape"] = list(shape)
    meta["surgery_report"] = result.report
    save_checkpoint(out_path, result.model, meta=meta, arch=result.model.edgeprune_arch)
    return result
