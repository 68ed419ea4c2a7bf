"""Neuron sensitivity (SeReNe eq. 4), its lower bound (eq. 10), upper bound (eq. 13) and local variant (eq. 19).

All four give one value per neuron per batch. ``y`` are the pre-softmax logits (B × C).

A conv filter has one PSP per spatial position; the paper's equations are written for one scalar PSP. Two ways to
aggregate over positions (``conv_sensitivity``), both averaged over the batch:

``"mean"`` (default; the paper's reference code): each position's PSP gets the paper's sensitivity and the filter
takes their average over positions — the derivative w.r.t. every position is taken *inside* |·|::

    exact  S   = mean_b mean_pos (1/C) Σ_k |∂y_k/∂p_b,pos|
    LB     S^l = mean_b mean_pos (1/C) |Σ_k ∂y_k/∂p_b,pos|       ≤ S   (triangle inequality, per position)
    UB     S^u = mean_b mean_pos (1/C) Σ_k [Π |J|]_k,(b,pos)     ≥ S   (|Σ_paths Π J| ≤ Σ_paths Π |J|)

``"sum"`` (edgeprune's earlier rule, kept as an option): the PSP is shifted by one per-channel scalar δ broadcast over the positions
and the derivative is taken w.r.t. δ, i.e. summed over positions inside |·| (exact: (1/C) Σ_k |Σ_pos ∂y_k/∂p_pos|).
For UB the two differ by exactly the number of positions; for exact and LB, "mean" × positions ≥ "sum". Linear
layers have one position: both are the same. The sum grows with the feature-map size, so on LeNet-5 it put conv
filters at S ≥ 1 (S̄ = 0, no penalty) under UB; the mean keeps conv and FC neurons on one scale.

    local  S~  = mean over samples and positions of |g'(p)|   (ReLU: the fraction of active positions, eq. 20)

The local sensitivity is per position by definition and is the same under both settings.

``∂y_k/∂p_b`` is taken on Σ_b' y_{b',k}: in eval mode that is sample b's own Jacobian; in train mode BatchNorm's
batch statistics couple the samples and the cross terms are included (the gradient autograd actually propagates).
The upper bound treats BatchNorm statistics as constants, so the ordering LB ≤ exact ≤ UB is guaranteed in eval mode
and for networks without BatchNorm.

In-place activations (``nn.SiLU(inplace=True)``, ``x.relu_()``, ``out += identity``) overwrite the PSP tensor after
it is produced: the derivatives here are always taken at the value the activation *received*, never at its output.
"""

from __future__ import annotations

import logging
import operator
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .neurons import ACTIVATION_FUNCTIONS, ACTIVATION_MODULES, ADDS, BATCHNORMS, PRODUCERS, NeuronGraph, NeuronLayer

log = logging.getLogger(__name__)

METHODS = ("exact", "lb", "ub", "local")
CONV_SENSITIVITY = ("mean", "sum")
DEFAULT_CONV_SENSITIVITY = "mean"
DEFAULT_CLASS_CHUNK = 16


def check_conv_sensitivity(conv_sensitivity: str) -> str:
    if conv_sensitivity not in CONV_SENSITIVITY:
        raise ValueError(f"conv_sensitivity must be one of {', '.join(CONV_SENSITIVITY)}, got {conv_sensitivity!r}")
    return conv_sensitivity


def _over_positions(t: torch.Tensor, how: str, start: int) -> torch.Tensor:
    """Mean or sum over the spatial dimensions ``start:`` (none for Linear layers)."""
    if t.dim() <= start:
        return t
    dims = list(range(start, t.dim()))
    return t.mean(dim=dims) if how == "mean" else t.sum(dim=dims)


class PspCapture:
    """Forward hooks on every neuron layer's PSP.

    ``inject``: add a zero tensor δ (the PSP's shape, a stride-0 leaf that requires grad) to the PSP, so that ∂y/∂δ is
    the derivative of the logits w.r.t. every position of the PSP (:func:`per_sample_from_deltas` aggregates it).
    The sum is a new tensor: an in-place activation after the PSP overwrites it, not the derivative's input.
    ``local``: record |g'(p)| averaged over samples and positions (SeReNe eq. 19) at the moment the activation
    receives ``p`` — before an in-place activation overwrites it; after a residual addition, at the activation's
    input (a forward pre-hook)."""

    def __init__(self, ng: NeuronGraph, layers: Iterable[NeuronLayer] | None = None, inject: bool = True,
                 local: bool = False):
        self.ng = ng
        self.layers = list(layers if layers is not None else ng.layers)
        self.inject = inject
        self.local = local
        self.enabled = True
        self.deltas: dict[str, torch.Tensor] = {}
        self.local_values: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "PspCapture":
        for nl in self.layers:
            self._handles.append(nl.psp_module.register_forward_hook(self._psp_hook(nl)))
            if self.local and nl.activation_after_add:
                if not isinstance(nl.activation, nn.Module):
                    raise ModelError(f"{nl.name}: local sensitivity after a residual add needs a module activation")
                self._handles.append(nl.activation.register_forward_pre_hook(self._act_pre_hook(nl)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        self.deltas.clear()
        self.local_values.clear()

    def _psp_hook(self, nl: NeuronLayer):
        def hook(module, inputs, out):
            if not self.enabled:
                return None
            if self.local and not nl.activation_after_add:
                self.local_values[nl.name] = _local_mean(nl.activation, out)
            if not self.inject or not torch.is_grad_enabled():
                return None
            delta = torch.zeros((), dtype=out.dtype, device=out.device).expand(out.shape).requires_grad_(True)
            self.deltas[nl.name] = delta
            return out + delta

        return hook

    def _act_pre_hook(self, nl: NeuronLayer):
        def hook(module, inputs):
            if self.enabled:
                self.local_values[nl.name] = _local_mean(nl.activation, inputs[0])

        return hook


def _local_mean(act, x: torch.Tensor) -> torch.Tensor:
    d = activation_derivative(act, x.detach())
    return d.mean(dim=[0] + list(range(2, d.dim())))


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ModelError(
            f"sensitivity needs logits of shape batch × classes, the model returns {tuple(logits.shape)}; "
            "segmentation or multi-output models are not supported by SeReNe"
        )


def per_sample_from_deltas(logits: torch.Tensor, deltas: list[torch.Tensor], method: str,
                           class_chunk: int = DEFAULT_CLASS_CHUNK, retain_graph: bool = False,
                           vectorized: bool = True, conv_sensitivity: str = DEFAULT_CONV_SENSITIVITY
                           ) -> list[torch.Tensor]:
    """Per-sample sensitivities (B × neurons) of each δ (a PSP-shaped shift, see :class:`PspCapture`) from the graph
    of ``logits``, aggregated over positions by ``conv_sensitivity`` (module docstring).

    ``lb`` (SeReNe eq. 10): one vector-Jacobian product with the all-ones vector. ``exact`` (eq. 4): the C products
    with the one-hot vectors, vectorized (``is_grads_batched``) over chunks of ``class_chunk`` classes so peak
    memory grows with the chunk, not with C. ``vectorized=False`` runs the products one by one instead: measured
    faster on CPU for conv nets in torch 2.15, whose batching rule for ``convolution_backward`` loops internally
    (docs/serene.md).
    """
    _check_logits(logits)
    how = check_conv_sensitivity(conv_sensitivity)
    C = logits.shape[1]
    if method == "lb":
        grads = torch.autograd.grad(logits, deltas, torch.ones_like(logits), retain_graph=retain_graph,
                                    allow_unused=True)
        return [_abs_per_neuron(_zeros_if_none(g, d), how, 2) / C for g, d in zip(grads, deltas)]
    if method != "exact":
        raise ValueError(f"per_sample_from_deltas handles exact and lb, not {method!r}")
    acc = [torch.zeros(d.shape[:2], dtype=d.dtype, device=d.device) for d in deltas]
    chunk = max(1, int(class_chunk))
    starts = list(range(0, C, chunk))
    for i, start in enumerate(starts):
        ks = torch.arange(start, min(start + chunk, C), device=logits.device)
        eye = torch.zeros(len(ks), *logits.shape, dtype=logits.dtype, device=logits.device)
        eye[torch.arange(len(ks)), :, ks] = 1.0
        last = i == len(starts) - 1
        keep = retain_graph or not last
        grads = _batched_grad(logits, deltas, eye, keep) if vectorized else _looped_grad(logits, deltas, eye, keep)
        for a, g in zip(acc, grads):
            if g is not None:
                a += _abs_per_neuron(g, how, 3).sum(0)
    return [a / C for a in acc]


def _abs_per_neuron(g: torch.Tensor, how: str, start: int) -> torch.Tensor:
    """|·| per position then mean ("mean"), or sum over positions then |·| ("sum")."""
    if how == "mean":
        return _over_positions(g.abs(), "mean", start)
    return _over_positions(g, "sum", start).abs()


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
        if isinstance(act, nn.Module):
            if getattr(act, "inplace", False):
                act = type(act)(**{k: getattr(act, k) for k in ("negative_slope", "alpha") if hasattr(act, k)})
            fn = act.forward  # without the module's hooks: a PspCapture may have hooked it
        (g,) = torch.autograd.grad(fn(xx + 0).sum(), xx)
    return g.abs()


def local_from_capture(nl: NeuronLayer, capture: PspCapture) -> torch.Tensor:
    """SeReNe eq. 19: mean over samples and positions of |∂y_n/∂p_n| (ReLU: eq. 20, the fraction active)."""
    v = capture.local_values.get(nl.name)
    if v is None:
        raise ModelError(f"no PSP captured for {nl.name}; run a forward pass inside the capture")
    return v


# ---------------------------------------------------------------------------------------------------------------
# Upper bound (SeReNe eq. 13): a forward pass of the "absolute" network.
# ---------------------------------------------------------------------------------------------------------------

class _Recorder(torch.fx.Interpreter):
    """Runs the traced model keeping every node's value; BatchNorm in train mode uses batch statistics without
    updating the running ones (the recording must not change the model). An in-place operation gets a copy of its
    input, so every recorded value stays what that node produced (the absolute network needs each activation's
    *input*; ``nn.SiLU(inplace=True)`` would otherwise leave its output in the PSP's place)."""

    def run_node(self, n):
        if not _is_inplace(self.module, n):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(),) + tuple(args[1:])
        return getattr(self, n.op)(n.target, args, kwargs)

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        if isinstance(mod, BATCHNORMS) and mod.training:
            return F.batch_norm(args[0], None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
        if isinstance(mod, nn.Dropout) and mod.training:
            raise ModelError("the upper bound does not support Dropout in train mode; use --method serene-lb")
        return super().call_module(target, args, kwargs)


_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


def _is_inplace(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """True for a node that overwrites its first input: a module with ``inplace=True``, ``F.silu(x, inplace=True)``
    (or its positional form), ``x += y``, ``torch.relu_`` and tensor methods ending in ``_``."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        if node.target in _INPLACE_OPERATORS or node.kwargs.get("inplace") is True:
            return True
        if node.target in ACTIVATION_FUNCTIONS and any(a is True for a in node.args[1:]):
            return True  # F.relu(x, True): the only bool positional parameter of these functions is inplace
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.startswith("__")
    return False


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


def upper_bound_per_sample(ng: NeuronGraph, x: torch.Tensor, layers: list[NeuronLayer] | None = None,
                           conv_sensitivity: str = DEFAULT_CONV_SENSITIVITY) -> list[torch.Tensor]:
    """SeReNe eq. 13 per sample (B × neurons for each layer): (1/C) Σ_k of the products of absolute Jacobians,
    summed over a conv filter's positions, divided by their number under ``conv_sensitivity="mean"`` (every term is
    non-negative, so that is exactly the mean of the per-position bounds).

    The absolute network replaces every Conv/Linear by its |W| (no bias), BatchNorm by |γ|/σ, each activation by
    its |g'| at the actual operating point, max-pooling by a gather at the actual argmax, and keeps average pools,
    reshapes and residual additions (their Jacobians are non-negative). It is linear in the injected shifts δ and
    starts from zero, so ∂(Σ outputs)/∂δ is exactly the row-sum of the absolute Jacobian product.
    """
    layers = list(layers if layers is not None else ng.layers)
    how = check_conv_sensitivity(conv_sensitivity)
    gm = ng.graph_module
    wanted = {nl.name for nl in layers}
    positions: dict[str, int] = {}
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
                positions[ng.psp_nodes[node.name]] = ref[0, 0].numel() if how == "mean" else 1
                shift = d.view(*d.shape, *([1] * (ref.dim() - 2))).expand_as(ref)
                val = shift if val is None else val + shift
            a[node.name] = val
        names = [nl.name for nl in layers]
        if out is None:
            return [torch.zeros(x.shape[0], nl.num_neurons, dtype=x.dtype, device=x.device) for nl in layers]
        grads = torch.autograd.grad(out.sum(), [deltas[n] for n in names], allow_unused=True)
    return [_zeros_if_none(g, deltas[n]).detach() / (C * positions[n]) for g, n in zip(grads, names)]


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
                       reduce: bool = True, conv_sensitivity: str = DEFAULT_CONV_SENSITIVITY
                       ) -> dict[str, torch.Tensor]:
    """Sensitivity of every neuron on batch ``x``: layer name → tensor (neurons,) (or B × neurons with
    ``reduce=False``; ``local`` is always reduced). ``conv_sensitivity``: "mean" or "sum" over a conv filter's
    positions (module docstring). The model's train/eval mode is respected; BatchNorm running statistics are not
    changed."""
    from .neurons import find_neurons

    if method not in METHODS:
        raise ValueError(f"unknown sensitivity {method!r}; choose one of {', '.join(METHODS)}")
    check_conv_sensitivity(conv_sensitivity)
    ng = ng or find_neurons(model)
    layers = list(layers if layers is not None else ng.layers)
    if method == "ub":
        vals = upper_bound_per_sample(ng, x, layers, conv_sensitivity)
        return {nl.name: (v.mean(0) if reduce else v) for nl, v in zip(layers, vals)}
    saved = _freeze_bn_stats(model)
    try:
        with PspCapture(ng, layers, inject=method != "local", local=method == "local") as cap:
            with torch.enable_grad():
                logits = model(x)
            if method == "local":
                return {nl.name: local_from_capture(nl, cap) for nl in layers}
            vals = per_sample_from_deltas(logits, [cap.deltas[nl.name] for nl in layers], method, class_chunk,
                                          conv_sensitivity=conv_sensitivity)
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


__all__ = ["CONV_SENSITIVITY", "DEFAULT_CONV_SENSITIVITY", "METHODS", "PspCapture", "activation_derivative", "local_from_capture", "per_sample_from_deltas",
           "neuron_sensitivity", "upper_bound_per_sample"]
