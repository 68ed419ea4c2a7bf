"""Update rules applied after every optimizer step: SeReNe (eq. 15 with pinning, eq. 23), LOBSTER (LOBSTER eq. 4)
and ℓ2 (weight decay in the optimizer, λ = 0).

SeReNe: every parameter θ of neuron (n, i) — weight row, bias, BatchNorm γ and β — moves by −λ·θ·max(0, 1 − S_{n,i})
(eq. 14–15). LOBSTER: every parameter moves by −λ·θ·max(0, 1 − |∂L/∂θ|) (unstructured). The step itself
(−η ∂L/∂θ, momentum) is the optimizer's; pruned parameters are pinned to zero with their momentum.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..masks import Masks, pin_, zero_pinned_grads_
from .neurons import NeuronGraph, NeuronLayer, find_neurons
from .sensitivity import (
    CONV_SENSITIVITY,
    DEFAULT_CLASS_CHUNK,
    DEFAULT_CONV_SENSITIVITY,
    PspCapture,
    local_from_capture,
    per_sample_from_deltas,
    upper_bound_per_sample,
)

log = logging.getLogger(__name__)

UPDATE_METHODS = ("serene-lb", "serene-exact", "serene-ub", "serene-local", "lobster", "l2")


def insensitivity(s: torch.Tensor) -> torch.Tensor:
    """SeReNe eq. 14: S̄ = max(0, 1 − S)."""
    return (1.0 - s).clamp_min(0.0)


@torch.no_grad()
def serene_update_(layers: list[NeuronLayer], sens: dict[str, torch.Tensor], lam: float,
                   weights: dict[str, torch.Tensor] | None = None) -> None:
    """SeReNe eq. 15 (the regularization term): θ ← θ − λ·θ·S̄ for every parameter of every neuron; with
    ``weights`` (layer → per-neuron factor, e.g. latency weights) neuron n's λ is λ·weights[layer][n]."""
    for nl in layers:
        s = sens.get(nl.name)
        if s is None:
            continue
        w = (weights or {}).get(nl.name)
        keep = 1.0 - lam * insensitivity(s) * (w.to(s.device, s.dtype) if w is not None else 1.0)
        for _, p in nl.parameters():
            p.mul_(keep.to(p.dtype).view(-1, *([1] * (p.dim() - 1))))


@torch.no_grad()
def lobster_insensitivity(model: nn.Module) -> dict[str, torch.Tensor]:
    """LOBSTER eq. 4: per parameter max(0, 1 − |∂L/∂θ|), read from the gradients in place."""
    return {n: insensitivity(p.grad.abs()) for n, p in model.named_parameters() if p.grad is not None}


@torch.no_grad()
def lobster_update_(model: nn.Module, insens: dict[str, torch.Tensor], lam: float) -> None:
    for n, p in model.named_parameters():
        if n in insens:
            p.sub_(lam * p * insens[n])


class Regularizer:
    """The per-step hooks of one method inside the training loop (see :func:`edgeprune.regularize.loop`)."""

    def __init__(self, model: nn.Module, method: str, lam: float, masks: Masks, ng: NeuronGraph | None = None,
                 class_chunk: int = DEFAULT_CLASS_CHUNK, reduce_fn=None, exact_vjp: str = "vectorized",
                 conv_sensitivity: str = DEFAULT_CONV_SENSITIVITY):
        """``exact_vjp``: "vectorized" or "loop" (see :func:`per_sample_from_deltas`). ``conv_sensitivity``: "mean"
        or "sum" over a conv filter's positions (:mod:`edgeprune.regularize.sensitivity`).
        ``reduce_fn(values) -> values`` averages per-neuron sensitivities across data-parallel ranks (None: one
        process); LOBSTER needs none, its gradients are averaged before :meth:`after_backward`."""
        if method not in UPDATE_METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(UPDATE_METHODS)}")
        if conv_sensitivity not in CONV_SENSITIVITY:
            raise ConfigError(f"conv sensitivity must be one of {', '.join(CONV_SENSITIVITY)}, got {conv_sensitivity!r}")
        self.model = model
        self.method = method
        self.lam = float(lam)
        self.masks = masks
        self.class_chunk = class_chunk
        self.vectorized = exact_vjp != "loop"
        self.conv_sensitivity = conv_sensitivity
        self.reduce_fn = reduce_fn
        self.kind = method.removeprefix("serene-") if method.startswith("serene-") else None
        self.ng = ng if ng is not None or self.kind is None else find_neurons(model)
        self.layers = self.ng.layers if self.ng is not None else []
        self.capture: PspCapture | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self.neuron_weights: dict[str, torch.Tensor] | None = None
        """Layer → per-neuron factor on SeReNe's λ (``--latency-penalty``); None: λ for every neuron."""

    @property
    def needs_graph(self) -> bool:
        """exact / LB differentiate the logits after the loss backward: the graph must be kept."""
        return self.kind in ("exact", "lb") and self.lam > 0

    def __enter__(self) -> "Regularizer":
        if self.kind in ("exact", "lb", "local") and self.lam > 0:
            self.capture = PspCapture(self.ng, self.layers, inject=self.kind != "local", local=self.kind == "local")
            self.capture.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.capture is not None:
            self.capture.__exit__(*exc)
            self.capture = None

    def set_capture(self, enabled: bool) -> None:
        """Hooks off during evaluation (no δ, no stored PSPs)."""
        if self.capture is not None:
            self.capture.enabled = enabled

    def after_backward(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        """Between backward and the optimizer step: sensitivities (or LOBSTER's gradients) and pinned gradients."""
        self._pending = {}
        if self.lam > 0:
            if self.kind in ("exact", "lb"):
                deltas = [self.capture.deltas[nl.name] for nl in self.layers]
                vals = per_sample_from_deltas(logits, deltas, self.kind, self.class_chunk, retain_graph=False,
                                              vectorized=self.vectorized, conv_sensitivity=self.conv_sensitivity)
                self._pending = {nl.name: v.mean(0) for nl, v in zip(self.layers, vals)}
            elif self.kind == "ub":
                vals = upper_bound_per_sample(self.ng, x.detach(), self.layers, self.conv_sensitivity)
                self._pending = {nl.name: v.mean(0) for nl, v in zip(self.layers, vals)}
            elif self.kind == "local":
                self._pending = {nl.name: local_from_capture(nl, self.capture) for nl in self.layers}
            elif self.method == "lobster":
                self._pending = lobster_insensitivity(self.model)
            if self.reduce_fn is not None and self.kind is not None and self._pending:
                self._pending = self.reduce_fn(self._pending)
        if self.capture is not None:
            self.capture.clear()
        zero_pinned_grads_(self.model, self.masks)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.lam > 0 and self._pending:
            if self.kind is not None:
                serene_update_(self.layers, self._pending, self.lam, self.neuron_weights)
            elif self.method == "lobster":
                lobster_update_(self.model, self._pending, self.lam)
        self._pending = {}
        pin_(self.model, self.masks, optimizer)
