"""Neuron sensitivity (SeReNe eq. 4), its lower bound (eq. 10), upper bound (eq. 13) and local variant (eq. 19).

All four give one value per neuron per batch. ``y`` are the pre-softmax logits (B × C).

Aggregation over positions and samples (one definition for all four, so that LB ≤ exact ≤ UB holds neuron by
neuron): a conv filter's PSP is perturbed by a per-sample, per-channel scalar shift δ (p ← p + δ broadcast over the
spatial positions), the derivatives are taken with respect to δ — i.e. summed over positions *inside* the |·| — and
the per-sample values are averaged over the batch::

    exact  S   = mean_b (1/C) Σ_k |∂y_k/∂δ_b|
    LB     S^l = mean_b (1/C) |Σ_k ∂y_k/∂δ_b|          ≤ S   (triangle inequality, per sample)
    UB     S^u = mean_b (1/C) Σ_k [Π |J|]_k,b          ≥ S   (|Σ_paths Π J| ≤ Σ_paths Π |J|, per sample)
    local  S~  = mean over samples and positions of |g'(p)|   (ReLU: the fraction of active positions)

``∂y_k/∂δ_b`` is taken on Σ_b' y_{b',k}: in eval mode that is sample b's own Jacobian; in train mode BatchNorm's
batch statistics couple the samples and the cross terms are included (the gradient autograd actually propagates).
The upper bound treats BatchNorm statistics as constants, so the ordering is guaranteed in eval mode and for
networks without BatchNorm.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .neurons import ACTIVATION_FUNCTIONS, ACTIVATION_MODULES, ADDS, BATCHNORMS, PRODUCERS, NeuronGraph, NeuronLayer

log = logging.getLogger(__name__)

METHODS = ("exact", "lb", "ub", "local")
DEFAULT_CLASS_CHUNK = 16


class PspCapture:
    """Forward hooks that add a zero shift δ (B × neurons, requires grad) to every neuron layer's PSP, so that
    ∂y/∂δ is the per-channel derivative of the logits with respect to the PSP. Optionally keeps the PSPs (and the
    inputs of activations that follow a residual addition) for the local sensitivity."""

    def __init__(self, ng: NeuronGraph, layers: Iterable[NeuronLayer] | None = None, inject: bool = True,
                 keep_psp: bool = False):
        self.ng = ng
        self.layers = list(layers if layers is not None else ng.layers)
        self.inject = inject
        self.keep_psp = keep_psp
        self.enabled = True
        self.deltas: dict[str, torch.Tensor] = {}
        self.psps: dict[str, torch.Tensor] = {}
        self.act_inputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "PspCapture":
        for nl in self.layers:
            self._handles.append(nl.psp_module.register_forward_hook(self._psp_hook(nl.name)))
            if self.keep_psp and nl.activation_after_add:
                if not isinstance(nl.activation, nn.Module):
                    raise ModelError(f"{nl.name}: local sensitivity after a residual add needs a module activation")
                self._handles.append(nl.activation.register_forward_hook(self._act_hook(nl.name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        self.deltas.clear()
        self.psps.clear()
        self.act_inputs.clear()

    def _psp_hook(self, name: str):
        def hook(module, inputs, out):
            if not self.enabled:
                return None
            if self.keep_psp:
                self.psps[name] = out.detach()
            if not self.inject or not torch.is_grad_enabled():
                return None
            delta = torch.zeros(out.shape[0], out.shape[1], dtype=out.dtype, device=out.device, requires_grad=True)
            self.deltas[name] = delta
            return out + delta.view(*delta.shape, *([1] * (out.dim() - 2)))

        return hook

    def _act_hook(self, name: str):
        def hook(module, inputs, out):
            if self.enabled:
                self.act_inputs[name] = inputs[0].detach()

        return hook


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ModelError(
            f"sensitivity needs logits of shape batch × classes, the model returns {tuple(logits.shape)}; "
            "segmentation or multi-output models are not supported by SeReNe"
        )


def per_sample_from_deltas(logits: torch.Tensor, deltas: list[torch.Tensor], method: str,
                           class_chunk: int = DEFAULT_CLASS_CHUNK, retain_graph: bool = False,
                           vectorized: bool = True) -> list[torch.Tensor]:
    """Per-sample sensitivities (B × neurons) of each δ from the graph of ``logits``.

    ``lb`` (SeReNe eq. 10): one vector-Jacobian product with the all-ones vector. ``exact`` (eq. 4): the C products
    with the one-hot vectors, vectorized (``is_grads_batched``) over chunks of ``class_chunk`` classes so peak
    memory grows with the chunk, not with C. ``vectorized=False`` runs the products one by one instead: measured
    faster on CPU for conv nets in torch 2.15, whose batching rule for ``convolution_backward`` loops internally
    (docs/serene.md).
    """
    _check_logits(logits)
    C = logits.shape[1]
    if method == "lb":
        grads = torch.autograd.grad(logits, deltas, torch.ones_like(logits), retain_graph=retain_graph,
                                    allow_unused=True)
        return [_zeros_if_none(g, d).abs() / C for g, d in zip(grads, deltas)]
    if method != "exact":
        raise ValueError(f"per_sample_from_deltas handles exact and lb, not {method!r}")
    acc = [torch.zeros_like(d) for d in deltas]
    chunk = max(1, int(class_chunk))
    starts = list(range(0, C, chunk))
    for i, start in enumerate(starts):
        ks = torch.arange(start, min(start + chunk, C), device=logits.device)
        eye = torch.zeros(len(ks), *logits.shape, dtype=logits.dtype, device=logits.device)
        eye[torch.arange(len(ks)), :, ks] = 1.0
        last = i == len(starts) - 1
        keep = retain_graph or not last
        grads = _batched_grad(logits, deltas, eye, keep) if vectorized else _looped_grad(logits, deltas, eye, keep)
        for a, g, d in zip(acc, grads, deltas):
            if g is not None:
                a += g.abs().sum(0)
    return [a / C for a in acc]


def _batched_grad(logits, deltas, eye, retain_graph: bool):
    try:
        return torch.autograd.grad(logits, deltas, eye, retain_graph=retain_graph, is_grads_batched=True,
                                   allow_unused=True)
    except RuntimeError as exc:  # an op without a batching rule: fall back to one product per class
        log.debug("vectorized VJP failed (%s); looping over classes", str(exc).splitlines()[0])
        return _looped_grad(logits, deltas, eye, retain_graph)


def _looped_grad(logits, deltas, eye, retain_graph: bool):
    out = [[] for _ in deltas]
    for j in range(eye.shape[0]):
        gs = torch.autograd.grad(logits, deltas, eye[j], retain_graph=True if j < eye.shape[0] - 1 else retain_graph,
                                 allow_unused=True)
        for o, g, d in zip(out, gs, deltas):
            o.append(_zeros_if_none(g, d))
    return [torch.stack(o) for o in out]


def _zeros_if_none(g, d):
    return torch.zeros_like(d) if g is None else g


def activation_derivative(act, x: torch.Tensor) -> torch.Tensor:
    """|g'(x)| elementwise for an activation module or function (ReLU family without autograd)."""
    if act is None:
        return torch.ones_like(x)
    if isinstance(act, nn.ReLU) or act in (F.relu, torch.relu):
        return (x > 0).to(x.dtype)
    if isinstance(act, nn.ReLU6) or act is F.relu6:
        return ((x > 0) & (x < 6)).to(x.dtype)
    if isinstance(act, nn.Hardtanh):
        return ((x > act.min_val) & (x < act.max_val)).to(x.dtype)
    if isinstance(act, nn.LeakyReLU):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, abs(act.negative_slope)))
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        fn = act
        if isinstance(act, nn.Module) and getattr(act, "inplace", False):
            fn = type(act)(**{k: getattr(act, k) for k in ("negative_slope", "alpha") if hasattr(act, k)})
        (g,) = torch.autograd.grad(fn(xx + 0).sum(), xx)
    return g.abs()


def local_from_capture(nl: NeuronLayer, capture: PspCapture) -> torch.Tensor:
    """SeReNe eq. 19: mean over samples and positions of |∂y_n/∂p_n| (ReLU: eq. 20, the fraction active)."""
    x = capture.act_inputs.get(nl.name) if nl.activation_after_add else capture.psps.get(nl.name)
    if x is None:
        raise ModelError(f"no PSP captured for {nl.name}; run a forward pass inside the capture")
    d = activation_derivative(nl.activation, x)
    dims = [0] + list(range(2, d.dim()))
    return d.mean(dim=dims)


# ---------------------------------------------------------------------------------------------------------------
# Upper bound (SeReNe eq. 13): a forward pass of the "absolute" network.
# ---------------------------------------------------------------------------------------------------------------

class _Recorder(torch.fx.Interpreter):
    """Runs the traced model keeping every node's value; BatchNorm in train mode uses batch statistics without
    updating the running ones (the recording must not change the model)."""

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        if isinstance(mod, BATCHNORMS) and mod.training:
            return F.batch_norm(args[0], None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
        if isinstance(mod, nn.Dropout) and mod.training:
            raise ModelError("the upper bound does not support Dropout in train mode; use --method serene-lb")
        return super().call_module(target, args, kwargs)


def _bn_abs_scale(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if mod.training or mod.running_var is None:
        dims = [0] + list(range(2, x.dim()))
        var = x.var(dim=dims, unbiased=False)
    else:
        var = mod.running_var
    scale = torch.rsqrt(var + mod.eps)
    if mod.weight is not None:
        scale = scale * mod.weight.detach().abs()
    return scale.view(1, -1, *([1] * (x.dim() - 2)))


_PASSTHROUGH_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Unflatten)
_PASSTHROUGH_FUNCTIONS = (torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool1d,
                          torch.reshape, F.dropout)
_PASSTHROUGH_METHODS = ("view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "mean")


def upper_bound_per_sample(ng: NeuronGraph, x: torch.Tensor, layers: list[NeuronLayer] | None = None
                           ) -> list[torch.Tensor]:
    """SeReNe eq. 13 per sample (B × neurons for each layer): (1/C) Σ_k of the products of absolute Jacobians.

    The absolute network replaces every Conv/Linear by its |W| (no bias), BatchNorm by |γ|/σ, each activation by
    its |g'| at the actual operating point, max-pooling by a gather at the actual argmax, and keeps average pools,
    reshapes and residual additions (their Jacobians are non-negative). It is linear in the injected shifts δ and
    starts from zero, so ∂(Σ outputs)/∂δ is exactly the row-sum of the absolute Jacobian product.
    """
    layers = list(layers if layers is not None else ng.layers)
    gm = ng.graph_module
    wanted = {nl.name for nl in layers}
    with torch.no_grad():
        rec = _Recorder(gm, garbage_collect_values=False)
        logits = rec.run(x)
        env = rec.env
    _check_logits(logits)
    C = logits.shape[1]
    deltas: dict[str, torch.Tensor] = {}
    a: dict[str, torch.Tensor | None] = {}

    def arg(n):
        return a.get(n.name) if isinstance(n, torch.fx.Node) else None

    with torch.enable_grad():
        for node in gm.graph.nodes:
            if node.op == "placeholder" or node.op == "get_attr":
                a[node.name] = None
                continue
            if node.op == "output":
                out = arg(node.args[0])
                break
            ins = [arg(n) for n in node.all_input_nodes]
            if all(v is None for v in ins):
                val = None
            else:
                val = _abs_step(gm, node, env, a)
            if node.name in ng.psp_nodes and ng.psp_nodes[node.name] in wanted:
                ref = env[node]
                d = torch.zeros(ref.shape[0], ref.shape[1], dtype=ref.dtype, device=ref.device, requires_grad=True)
                deltas[ng.psp_nodes[node.name]] = d
                shift = d.view(*d.shape, *([1] * (ref.dim() - 2))).expand_as(ref)
                val = shift if val is None else val + shift
            a[node.name] = val
        names = [nl.name for nl in layers]
        if out is None:
            return [torch.zeros(x.shape[0], nl.num_neurons, dtype=x.dtype, device=x.device) for nl in layers]
        grads = torch.autograd.grad(out.sum(), [deltas[n] for n in names], allow_unused=True)
    return [_zeros_if_none(g, deltas[n]).detach() / C for g, n in zip(grads, names)]


def _abs_step(gm, node, env, a):
    """One node of the absolute network (see :func:`upper_bound_per_sample`)."""
    def A(n):
        v = a.get(n.name) if isinstance(n, torch.fx.Node) else None
        return v if v is not None else torch.zeros_like(env[n])

    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        src = node.args[0]
        xin = A(src)
        if isinstance(mod, nn.Linear):
            return F.linear(xin, mod.weight.detach().abs())
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if mod.padding_mode != "zeros":
                raise ModelError(f"{node.target}: the upper bound supports zero-padded convolutions only")
            return mod._conv_forward(xin, mod.weight.detach().abs(), None)
        if isinstance(mod, BATCHNORMS):
            return xin * _bn_abs_scale(mod, env[src])
        if isinstance(mod, ACTIVATION_MODULES):
            return xin * activation_derivative(mod, env[src])
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            return _maxpool_gather(mod, xin, env[src])
        if isinstance(mod, _PASSTHROUGH_MODULES):
            if isinstance(mod, nn.Dropout) and mod.training:
                raise ModelError("the upper bound does not support Dropout in train mode")
            return mod(xin)
        if isinstance(mod, nn.Sequential) and len(mod) == 0:
            return xin
        raise ModelError(f"the upper bound (serene-ub) does not support {type(mod).__name__} ({node.target}); "
                         "use --method serene-lb or serene-exact")
    if node.op == "call_function":
        if node.target in ADDS:
            return sum(A(n) for n in node.args if isinstance(n, torch.fx.Node))
        if node.target in ACTIVATION_FUNCTIONS:
            return A(node.args[0]) * activation_derivative(node.target, env[node.args[0]])
        if node.target in _PASSTHROUGH_FUNCTIONS:
            return node.target(A(node.args[0]), *node.args[1:], **node.kwargs)
        if node.target is F.max_pool2d:
            raise ModelError("the upper bound supports max pooling as nn.MaxPool modules only")
    if node.op == "call_method" and node.target in _PASSTHROUGH_METHODS:
        args = [A(node.args[0])] + [env[n] if isinstance(n, torch.fx.Node) else n for n in node.args[1:]]
        return getattr(args[0], node.target)(*args[1:], **node.kwargs)
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return A(node.args[0]) * activation_derivative(torch.relu, env[node.args[0]])
    raise ModelError(f"the upper bound (serene-ub) does not support the operation {node.op} {node.target}; "
                     "use --method serene-lb or serene-exact")


def _maxpool_gather(mod, xin: torch.Tensor, xref: torch.Tensor) -> torch.Tensor:
    fn = F.max_pool2d if isinstance(mod, nn.MaxPool2d) else F.max_pool1d
    _, idx = fn(xref, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode, return_indices=True)
    flat = xin.flatten(2)
    return flat.gather(2, idx.flatten(2)).view_as(idx)


# ---------------------------------------------------------------------------------------------------------------
# One call for all four variants.
# ---------------------------------------------------------------------------------------------------------------

def neuron_sensitivity(model: nn.Module, x: torch.Tensor, method: str = "exact", ng: NeuronGraph | None = None,
                layers: list[NeuronLayer] | None = None, class_chunk: int = DEFAULT_CLASS_CHUNK,
                reduce: bool = True) -> dict[str, torch.Tensor]:
    """Sensitivity of every neuron on batch ``x``: layer name → tensor (neurons,) (or B × neurons with
    ``reduce=False``; ``local`` is always reduced). The model's train/eval mode is respected; BatchNorm running
    statistics are not changed."""
    from .neurons import find_neurons

    if method not in METHODS:
        raise ValueError(f"unknown sensitivity {method!r}; choose one of {', '.join(METHODS)}")
    ng = ng or find_neurons(model)
    layers = list(layers if layers is not None else ng.layers)
    if method == "ub":
        vals = upper_bound_per_sample(ng, x, layers)
        return {nl.name: (v.mean(0) if reduce else v) for nl, v in zip(layers, vals)}
    saved = _freeze_bn_stats(model)
    try:
        with PspCapture(ng, layers, inject=method != "local", keep_psp=method == "local") as cap:
            with torch.enable_grad():
                logits = model(x)
            if method == "local":
                return {nl.name: local_from_capture(nl, cap) for nl in layers}
            vals = per_sample_from_deltas(logits, [cap.deltas[nl.name] for nl in layers], method, class_chunk)
    finally:
        _restore_bn_stats(saved)
    return {nl.name: (v.mean(0) if reduce else v).detach() for nl, v in zip(layers, vals)}


def _freeze_bn_stats(model: nn.Module):
    saved = []
    for m in model.modules():
        if isinstance(m, BATCHNORMS) and m.training and m.track_running_stats:
            saved.append((m, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None,
                          m.running_mean.clone(), m.running_var.clone()))
    return saved


def _restore_bn_stats(saved) -> None:
    with torch.no_grad():
        for m, nbt, rm, rv in saved:
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


__all__ = ["METHODS", "PspCapture", "activation_derivative", "local_from_capture", "per_sample_from_deltas",
           "neuron_sensitivity", "upper_bound_per_sample"]
