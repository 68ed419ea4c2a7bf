"""Dead-channel evidence: zero weight rows (parameters) and per-channel statistics of consumer inputs (a probe).

A channel is *provably constant* when every producer writing it has an all-zero weight row: its output is then
the bias (or BN's shift of it) whatever the input, and every elementwise op, BN, add or concat downstream keeps it
constant. The probe confirms it where the channel is consumed: the input a consumer sees on that channel is
constant over the probe batch (and over space for convolutions), and gives the constant's value c. The probe alone
is never trusted: a ReLU can make a live channel look dead on a few inputs.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

PARAM_ATOL = 0.0
"""A weight counts as zero only when exactly zero: thresholding pins pruned weights to 0.0."""
CONST_ATOL = 1e-7
CONST_RTOL = 1e-5
"""A channel is constant on the probe when max - min <= CONST_ATOL + CONST_RTOL * max|value| (pooling of a
constant can differ in the last bits)."""
ZERO_ATOL = 1e-12
"""A constant channel is zero when max|value| <= ZERO_ATOL; otherwise its value c must be folded."""

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CONSUMERS = CONVS + (nn.Linear,)


def weight_rows_zero(layer: nn.Module, idxs: list[int], atol: float = PARAM_ATOL) -> list[bool]:
    """Per output index: is the layer's whole weight row (all inputs, all taps) zero?"""
    w = layer.weight.detach()
    if not len(idxs):
        return []
    if isinstance(layer, CONVS) and layer.transposed:
        if layer.groups > 1:
            # (in, out/groups, k...): an output's row is spread over its group's inputs; never claimed.
            return [False] * len(idxs)
        w = w.transpose(0, 1)
    rows = w[torch.as_tensor(idxs, dtype=torch.long, device=w.device)]
    return (rows.reshape(len(idxs), -1).abs().amax(1) <= atol).tolist()


def input_columns(layer: nn.Module) -> torch.Tensor:
    """The weight as one row per input channel / feature: every weight that reads that input. A grouped conv's
    input k is read only by the outputs of its own group (k // (in/groups)), at column k % (in/groups)."""
    w = layer.weight.detach()
    if isinstance(layer, CONVS):
        if layer.transposed:
            return w.reshape(w.shape[0], -1)
        g = layer.groups
        per_out, per_in = layer.out_channels // g, layer.in_channels // g
        return w.reshape(g, per_out, per_in, -1).permute(0, 2, 1, 3).reshape(layer.in_channels, -1)
    return w.t()


def weight_cols_zero(layer: nn.Module, idxs: list[int], atol: float = PARAM_ATOL) -> list[bool]:
    """Per input index: does the layer ignore that input (every weight reading it is zero)?"""
    if not len(idxs):
        return []
    cols = input_columns(layer)
    cols = cols[torch.as_tensor(idxs, dtype=torch.long, device=cols.device)]
    return (cols.abs().amax(1) <= atol).tolist()


@dataclasses.dataclass
class ChannelStats:
    """Per input channel (conv) or feature (linear) of one consumer, over every probe sample and position."""

    lo: torch.Tensor
    hi: torch.Tensor
    total: torch.Tensor
    count: int
    calls: int = 0

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    def constant(self) -> torch.Tensor:
        scale = torch.maximum(self.lo.abs(), self.hi.abs())
        return (self.hi - self.lo) <= CONST_ATOL + CONST_RTOL * scale

    def zero(self) -> torch.Tensor:
        return torch.maximum(self.lo.abs(), self.hi.abs()) <= ZERO_ATOL


def _channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    return x.dim() - 1 if isinstance(module, nn.Linear) else 1


def probe_inputs(model: nn.Module, consumers: dict[str, nn.Module],
                 batches: list[torch.Tensor]) -> tuple[dict[str, ChannelStats], list[str]]:
    """Run the batches through the model, recording per-channel min / max / mean of each consumer's input.

    Also returns the consumers' execution order (the last one is the output layer). ``calls`` counts a consumer's
    invocations per forward pass: a module applied twice cannot take a fold.
    """
    stats: dict[str, ChannelStats] = {}
    calls: dict[str, int] = {}
    order: list[str] = []

    def hook(name):
        def pre(module, args):
            x = args[0].detach()
            d = _channel_dim(module, x)
            dims = [i for i in range(x.dim()) if i != d]
            # min / max are exact in the input precision; the sum (for the fold value) accumulates in float64.
            lo, hi = x.amin(dims).double(), x.amax(dims).double()
            tot = x.sum(dims, dtype=torch.float64)
            n = x.numel() // x.shape[d]
            calls[name] = calls.get(name, 0) + 1
            if len(calls) > len(order):
                order.append(name)
            s = stats.get(name)
            if s is None or s.lo.shape != lo.shape:
                stats[name] = ChannelStats(lo, hi, tot, n)
            else:
                s.lo, s.hi, s.total = torch.minimum(s.lo, lo), torch.maximum(s.hi, hi), s.total + tot
                s.count += n

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in consumers.items()]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    for name, s in stats.items():
        s.calls = -(-calls[name] // max(len(batches), 1))
    return stats, order


def producer_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of conv / linear modules in the order they first run (the last one is the output layer)."""
    consumers = {n: m for n, m in model.named_modules() if isinstance(m, CONSUMERS)}
    return probe_inputs(model, consumers, [x])[1]
