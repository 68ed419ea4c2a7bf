"""Which channels leave: coupled groups from torch-pruning's DependencyGraph, reduced to channels dead in every member.

A group couples every tensor slice a channel touches (residual adds, concatenations, BN, depthwise convs,
flatten → Linear). Removing root channel r is exact only when
  * every conv / linear producer in the group has an all-zero weight row for r (the channel is provably constant;
    a depthwise conv may instead receive a provable zero on r),
  * every consumer sees a constant on it in the probe, and
  * the constant is zero, or every consumer can absorb it into its bias (Linear; conv without padding);
or when every consumer ignores the channel (all-zero weight columns): then its value does not matter; a consumer
that ignores a channel sets no condition on it.

Grouped convolutions (1 < groups < channels; ResNeXt, RegNet) cannot lose single channels: a group of such a conv
leaves as a whole — its input channels from the group feeding it and its output channels from the group it feeds,
all removable — and every other removable channel touching it is kept with the reason (:func:`reconcile_grouped`).
The layer itself is then rebuilt with fewer groups (replay.cut_conv_groups), not by torch-pruning.
"""

from __future__ import annotations

import dataclasses
import math

import torch.nn as nn

from .detect import CONVS, ChannelStats, weight_cols_zero, weight_rows_zero


@dataclasses.dataclass
class GroupPlan:
    root: str
    channels: int
    remove: list[int] = dataclasses.field(default_factory=list)
    """Root-layer output indices to remove (unique, sorted)."""
    folds: dict[int, list[tuple[str, int, float]]] = dataclasses.field(default_factory=dict)
    """Root index → (consumer name, consumer input index, constant) to add into that consumer's bias."""
    kept: dict[int, str] = dataclasses.field(default_factory=dict)
    """Root index whose producers are all zero but which stays → why."""
    skipped: str | None = None
    grouped: list[tuple[str, str, list[tuple[int, int]]]] = dataclasses.field(default_factory=list)
    """Grouped convs in this group: (name, "in" or "out", [(index in that conv, root index)])."""
    proven: set[int] = dataclasses.field(default_factory=set)
    """Root indices every producer of the group leaves constant (parameter evidence)."""


def _allowed_types():
    import torch_pruning as tp

    t = tp.ops.OPTYPE
    return {t.CONV, t.BN, t.LINEAR, t.PRELU, t.DEPTHWISE_CONV, t.CONCAT, t.SPLIT, t.ELEMENTWISE, t.RESHAPE, t.SLICE}


def is_grouped_conv(m: nn.Module) -> bool:
    """1 < groups and not a plain depthwise conv (groups == in == out): torch-pruning cannot cut these consistently,
    so surgery cuts them itself, a whole group at a time (see :func:`reconcile_grouped`)."""
    return isinstance(m, CONVS) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def fold_blocker(m: nn.Module, stats: ChannelStats) -> str | None:
    """Why a constant input channel cannot be folded into ``m``'s bias exactly (None when it can)."""
    if stats.calls > 1:
        return "the layer runs more than once per forward"
    if isinstance(m, nn.Linear):
        return None
    if m.transposed:
        return "a transposed conv spreads a constant unevenly"
    if m.groups > 1:
        return "grouped conv"
    pad = m.padding
    if isinstance(pad, str):
        if pad != "valid":
            return f"conv padding={pad!r} changes border outputs"
    elif any(p != 0 for p in pad):
        return f"conv padding={tuple(pad)} changes border outputs"
    return None


def _describe(dep) -> str:
    return dep.target.name.split(" (")[0]


def _output_reached(it, outputs: set) -> str | None:
    """Why this member's channels are part of the model's interface (its output tensor leaves the model), or None.
    A conv / linear that only *reads* the group's channels keeps its output width."""
    import torch_pruning as tp

    node = it.dep.target
    if node.type == tp.ops.OPTYPE.OUTPUT:
        return f"these channels reach a model output (shape {list(node.module.shape)[1:]} per sample) directly"
    if node not in outputs:
        return None
    if node.type in (tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR) and it.dep.handler.__name__ == "prune_in_channels":
        return None
    return f"{_describe(it.dep)} is a model output: its channels are part of the model's interface"


def plan_group(group, names: dict[nn.Module, str], stats: dict[str, ChannelStats], outputs: set = frozenset(),
               zero_inputs: dict[str, set[int]] | None = None) -> GroupPlan:
    """Decide which of a group's root channels can leave (see module docstring).

    ``outputs``: torch-pruning nodes whose output is a model output (their channels are never removed).
    ``zero_inputs``: grouped conv name → its input channels proven zero (by the plan of the group feeding it); a
    group of such a conv whose inputs are all zero outputs just its bias, like a depthwise conv fed zero.
    """
    import torch_pruning as tp

    items = list(group.items)
    root_mod = items[0].dep.target.module
    plan = GroupPlan(root=names[root_mod], channels=len(items[0].idxs))
    allowed = _allowed_types()
    conv_t, lin_t = tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR
    producers, consumers = [], []
    for it in items:
        node = it.dep.target
        reached = _output_reached(it, outputs)
        if reached:
            plan.skipped = reached
            return plan
        if node.type not in allowed:
            plan.skipped = f"{_describe(it.dep)} ({node.type.name}) is not supported by exact surgery"
            return plan
        mod = node.module
        reads = it.dep.handler.__name__ == "prune_in_channels"
        if is_grouped_conv(mod) and node.type == tp.ops.OPTYPE.DEPTHWISE_CONV:
            # groups == out_channels != in_channels: torch-pruning couples its inputs and outputs one to one.
            plan.skipped = f"{names[mod]} (groups == out channels != in channels) is not supported by exact surgery"
            return plan
        if is_grouped_conv(mod):
            plan.grouped.append((names[mod], "in" if reads else "out",
                                 [(int(i), int(r)) for i, r in zip(it.idxs, it.root_idxs)]))
        if node.type in (conv_t, lin_t):
            (consumers if reads else producers).append(it)
        elif node.type == tp.ops.OPTYPE.DEPTHWISE_CONV:
            producers.append(it)
    if not consumers:
        plan.skipped = "no conv / linear layer consumes these channels"
        return plan

    dead = set(items[0].root_idxs)
    for it in producers:
        mod = it.dep.target.module
        zeros = weight_rows_zero(mod, list(it.idxs))
        s = stats.get(names[mod])
        if it.dep.target.type == tp.ops.OPTYPE.DEPTHWISE_CONV and s is not None:
            # A depthwise conv fed zero on a channel (its producers upstream in this group are zero, the probe shows
            # the constant is 0; zero padding keeps it 0) outputs just its bias there, whatever its kernel.
            silent = s.constant() & s.zero()
            zeros = [z or bool(silent[i]) for z, i in zip(zeros, it.idxs)]
        elif is_grouped_conv(mod) and not mod.transposed and zero_inputs and names[mod] in zero_inputs:
            # Same for a grouped conv whose whole input group is proven zero: those outputs are just the bias.
            fed_zero = zero_inputs[names[mod]]
            per_in, per_out = mod.in_channels // mod.groups, mod.out_channels // mod.groups
            silent_groups = {j for j in range(mod.groups)
                             if all(j * per_in + k in fed_zero for k in range(per_in))}
            zeros = [z or int(i) // per_out in silent_groups for z, i in zip(zeros, it.idxs)]
        for zero, r in zip(zeros, it.root_idxs):
            if not zero:
                dead.discard(r)
    plan.proven = set(dead)
    # A channel every consumer ignores (all-zero weight columns) leaves whatever it carries: no fold needed.
    unused = set(items[0].root_idxs)
    ignores: dict[int, set[int]] = {}
    for n, it in enumerate(consumers):
        for zero, r in zip(weight_cols_zero(it.dep.target.module, list(it.idxs)), it.root_idxs):
            if zero:
                ignores.setdefault(n, set()).add(r)
            else:
                unused.discard(r)
    dead -= unused
    if not dead and not unused:
        return plan
    for n, it in enumerate(consumers):
        mod = it.dep.target.module
        name = names[mod]
        s = stats.get(name)
        ignored = ignores.get(n, set())
        if s is None:
            for r in it.root_idxs:
                if r in dead and r not in ignored:
                    plan.kept[r] = f"the probe never reached {name}"
            continue
        const, zero, mean = s.constant(), s.zero(), s.mean
        blocker = fold_blocker(mod, s)
        for idx, r in zip(it.idxs, it.root_idxs):
            # A consumer whose weights never read the channel loses nothing when it goes: no condition from it.
            if r not in dead or r in plan.kept or r in ignored:
                continue
            if not bool(const[idx]):
                plan.kept[r] = f"input {idx} of {name} varies on the probe although its producers are zero"
            elif not bool(zero[idx]):
                c = float(mean[idx])
                if blocker:
                    plan.kept[r] = f"constant {c:.4g} reaches {name}: {blocker}"
                else:
                    plan.folds.setdefault(r, []).append((name, int(idx), c))
    removable = sorted((dead - set(plan.kept)) | unused)
    if len(removable) >= plan.channels:
        r = removable.pop(0)
        plan.kept[r] = "a layer keeps at least one channel"
    plan.remove = removable
    for r in list(plan.folds):
        if r not in removable:
            del plan.folds[r]
    return plan


def zero_inputs_of(plans: list[GroupPlan], stats: dict[str, ChannelStats]) -> dict[str, set[int]]:
    """Grouped conv name → input channels proven zero: constant by parameter evidence in the feeding group, and
    zero where the conv reads them on the probe."""
    out: dict[str, set[int]] = {}
    for plan in plans:
        for conv, side, pairs in plan.grouped:
            s = stats.get(conv)
            if side != "in" or s is None or s.calls > 1:
                continue
            silent = s.constant() & s.zero()
            hit = {i for i, r in pairs if r in plan.proven and bool(silent[i])}
            if hit:
                out.setdefault(conv, set()).update(hit)
    return out


@dataclasses.dataclass
class GroupedCut:
    """What happens to one grouped conv: the groups cut out (indices of the original layer) and why others stay."""

    name: str
    groups: int
    cut: list[int] = dataclasses.field(default_factory=list)
    partial: dict[int, str] = dataclasses.field(default_factory=dict)
    """Group index → why it stays although some of its channels were removable."""


def reconcile_grouped(plans: list[GroupPlan], convs: dict[str, nn.Module]) -> dict[str, GroupedCut]:
    """Make every removal consistent with the grouped convs it touches: a group of conv G is cut only when all of
    its input channels (in the group feeding G) and all of its output channels (in the group G feeds) are removable;
    every other removable channel of G's inputs or outputs is kept, with the reason. Repeated until stable, as
    keeping a channel for one grouped conv can leave a group of another one partly removable."""
    cuts = {name: GroupedCut(name, m.groups) for name, m in convs.items()}
    while True:
        removable: dict[tuple[str, str], set[int]] = {}
        for plan in plans:
            rm = set(plan.remove)
            for conv, side, pairs in plan.grouped:
                removable.setdefault((conv, side), set()).update(i for i, r in pairs if r in rm)
        changed = False
        for name, m in convs.items():
            g = m.groups
            per = {"in": m.in_channels // g, "out": m.out_channels // g}
            why: dict[int, str] = {}
            cut = []
            for j in range(g):
                missing = {}
                for side in ("in", "out"):
                    span = list(range(j * per[side], (j + 1) * per[side]))
                    live = [i for i in span if i not in removable.get((name, side), set())]
                    if live:
                        missing[side] = live
                if m.transposed:
                    why[j] = "transposed grouped convolutions are not cut"
                elif missing:
                    parts = [f"{len(v)} of its {per[side]} {side}put channels" for side, v in missing.items()]
                    why[j] = (f"group {j} of {name} (groups={g}) is not entirely dead: {' and '.join(parts)} "
                              f"{'are' if len(missing) > 1 or len(next(iter(missing.values()))) > 1 else 'is'} "
                              "not removable")
                else:
                    cut.append(j)
            if len(cut) == g:
                j = cut.pop()
                why[j] = f"group {j} of {name}: a grouped conv keeps at least one group"
            cuts[name].cut = cut
            blocked = {side: {i: why[i // per[side]] for i in range(m.in_channels if side == "in" else m.out_channels)
                              if i // per[side] in why} for side in ("in", "out")}
            for plan in plans:
                for conv, side, pairs in plan.grouped:
                    if conv != name:
                        continue
                    for i, r in pairs:
                        if i in blocked[side] and r in plan.remove:
                            plan.kept[r] = blocked[side][i]
                            plan.remove = [x for x in plan.remove if x != r]
                            plan.folds.pop(r, None)
                            cuts[name].partial[i // per[side]] = blocked[side][i]
                            changed = True
        if not changed:
            return cuts


def round_plan(plan: GroupPlan, multiple: int) -> None:
    """Keep the fewest removable channels so the root layer's width is a multiple of ``multiple`` (or its full
    width). Channels that need a fold are kept first: keeping them costs nothing extra to fold."""
    if multiple <= 1 or not plan.remove:
        return
    kept = plan.channels - len(plan.remove)
    target = min(plan.channels, math.ceil(kept / multiple) * multiple)
    extra = target - kept
    if extra <= 0:
        return
    order = sorted(plan.remove, key=lambda r: (r not in plan.folds, -r))
    back = set(order[:extra])
    for r in back:
        plan.kept[r] = f"kept to round the width to a multiple of {multiple}"
        plan.folds.pop(r, None)
    plan.remove = sorted(set(plan.remove) - back)
