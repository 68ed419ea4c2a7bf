"""Which channels leave: coupled groups from torch-pruning's DependencyGraph, reduced to channels dead in every member.

A group couples every tensor slice a channel touches (residual adds, concatenations, BN, depthwise convs,
flatten → Linear). Removing root channel r is exact only when
  * every conv / linear producer in the group has an all-zero weight row for r (the channel is provably constant;
    a depthwise conv may instead receive a provable zero on r),
  * every consumer sees a constant on it in the probe, and
  * the constant is zero, or every consumer can absorb it into its bias (Linear; conv without padding);
or when every consumer ignores the channel (all-zero weight columns): then its value does not matter.
Anything else keeps the channel, with the reason recorded.
"""

from __future__ import annotations

import dataclasses
import math

import torch.nn as nn

from ..errors import SurgeryError
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
    grouped_convs: list[str] = dataclasses.field(default_factory=list)


def _allowed_types():
    import torch_pruning as tp

    t = tp.ops.OPTYPE
    return {t.CONV, t.BN, t.LINEAR, t.PRELU, t.DEPTHWISE_CONV, t.CONCAT, t.SPLIT, t.ELEMENTWISE, t.RESHAPE, t.SLICE}


def is_grouped_conv(m: nn.Module) -> bool:
    """1 < groups and not a plain depthwise conv (groups == in == out): torch-pruning cannot cut these consistently."""
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


def plan_group(group, names: dict[nn.Module, str], stats: dict[str, ChannelStats]) -> GroupPlan:
    """Decide which of a group's root channels can leave (see module docstring)."""
    import torch_pruning as tp

    items = list(group.items)
    root_mod = items[0].dep.target.module
    plan = GroupPlan(root=names[root_mod], channels=len(items[0].idxs))
    allowed = _allowed_types()
    conv_t, lin_t = tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR
    producers, consumers = [], []
    for it in items:
        node = it.dep.target
        if node.type not in allowed:
            plan.skipped = f"{_describe(it.dep)} ({node.type.name}) is not supported by exact surgery"
            return plan
        mod = node.module
        if is_grouped_conv(mod):
            plan.grouped_convs.append(names[mod])
        if node.type in (conv_t, lin_t):
            (consumers if it.dep.handler.__name__ == "prune_in_channels" else producers).append(it)
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
        for zero, r in zip(zeros, it.root_idxs):
            if not zero:
                dead.discard(r)
    # A channel every consumer ignores (all-zero weight columns) leaves whatever it carries: no fold needed.
    unused = set(items[0].root_idxs)
    for it in consumers:
        for zero, r in zip(weight_cols_zero(it.dep.target.module, list(it.idxs)), it.root_idxs):
            if not zero:
                unused.discard(r)
    dead -= unused
    if not dead and not unused:
        return plan
    for it in consumers:
        mod = it.dep.target.module
        name = names[mod]
        s = stats.get(name)
        if s is None:
            for r in it.root_idxs:
                if r in dead:
                    plan.kept[r] = f"the probe never reached {name}"
            continue
        const, zero, mean = s.constant(), s.zero(), s.mean
        blocker = fold_blocker(mod, s)
        for idx, r in zip(it.idxs, it.root_idxs):
            if r not in dead or r in plan.kept:
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


def check_grouped(plan: GroupPlan) -> None:
    if plan.remove and plan.grouped_convs:
        raise SurgeryError(
            f"channels {plan.remove[:8]}{'…' if len(plan.remove) > 8 else ''} of {plan.root} reach the grouped "
            f"convolution {plan.grouped_convs[0]} (1 < groups < channels), which cannot be cut consistently; "
            "revive those channels or keep the layer dense (e.g. exclude it from thresholding)"
        )
