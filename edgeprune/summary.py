"""Per-layer summary of a model: neurons (output channels / features), parameters, nonzero parameters and MACs.

A *layer* here is a module with its own weight that produces neurons: Conv*, Linear, ConvTranspose*. BatchNorm
parameters are counted with the layer they follow (they belong to the same neurons, SeReNe's definition). MACs come
from ``torch.utils.flop_counter`` (FLOPs / 2) on a batch of one sample.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


@dataclasses.dataclass
class LayerRow:
    name: str
    kind: str
    neurons: int
    params: int
    nonzero: int
    macs: int
    alive_neurons: int


@dataclasses.dataclass
class ModelSummary:
    layers: list[LayerRow]
    params_total: int
    params_nonzero: int
    macs: int
    input_shape: tuple[int, ...]

    @property
    def neurons(self) -> list[int]:
        return [r.neurons for r in self.layers]

    @property
    def alive_neurons(self) -> list[int]:
        return [r.alive_neurons for r in self.layers]

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "params_total": self.params_total,
            "params_nonzero": self.params_nonzero,
            "macs": self.macs,
            "neurons": self.neurons,
            "alive_neurons": self.alive_neurons,
            "layers": [dataclasses.asdict(r) for r in self.layers],
        }


def _neuron_count(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    return m.out_channels  # type: ignore[attr-defined]


def _following_bn(model: nn.Module) -> dict[str, nn.Module]:
    """Map producer name → the BatchNorm channel-wise attached to its neurons.

    The definition is SeReNe's, the one regularization, thresholding and surgery use
    (:func:`edgeprune.regularize.neurons.find_neurons`: the BN that directly consumes the layer's output in the
    traced graph, wherever it sits in the module tree — e.g. DenseNet's ``conv1 → norm2``). Only a model torch.fx
    cannot trace falls back to module-tree adjacency (a Sequential's next child, or ``convN``/``bnN`` pairs)."""
    from .errors import ModelError
    from .regularize.neurons import find_neurons

    try:
        return {nl.name: nl.bn for nl in find_neurons(model).layers if nl.bn is not None}
    except ModelError:
        return _following_bn_by_name(model)


def _following_bn_by_name(model: nn.Module) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            children = list(mod.named_children())
            for (n1, a), (_, b) in zip(children, children[1:]):
                if isinstance(a, PRODUCERS) and isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                    out[f"{prefix}.{n1}" if prefix else n1] = b
    # Named pairs such as conv1/bn1 in residual blocks.
    for prefix, mod in model.named_modules():
        for n, child in mod.named_children():
            if isinstance(child, PRODUCERS) and n.startswith("conv"):
                bn = getattr(mod, "bn" + n[4:], None)
                if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                    out[f"{prefix}.{n}" if prefix else n] = bn
    return out


def alive_mask(layer: nn.Module, bn: nn.Module | None = None) -> torch.Tensor:
    """Per-neuron bool: True where any parameter of the neuron (weight row, bias, BN γ/β) is nonzero."""
    w = layer.weight.detach()
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        w = w.transpose(0, 1)
    alive = w.reshape(w.shape[0], -1).ne(0).any(1)
    if getattr(layer, "bias", None) is not None:
        alive |= layer.bias.detach().ne(0)
    if bn is not None and bn.weight is not None:
        alive |= bn.weight.detach().ne(0) | bn.bias.detach().ne(0)
    return alive


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((1, *input_shape), device=device)
    root = type(model).__name__
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    counts = fc.get_flop_counts()
    model.train(was_training)
    bns = _following_bn(model)
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, PRODUCERS):
            continue
        bn = bns.get(name)
        params = [p for p in m.parameters(recurse=False)] + (list(bn.parameters()) if bn is not None else [])
        flops = sum(counts.get(f"{root}.{name}", {}).values())
        rows.append(
            LayerRow(
                name=name,
                kind=type(m).__name__,
                neurons=_neuron_count(m),
                params=sum(p.numel() for p in params),
                nonzero=int(sum(int(p.detach().ne(0).sum()) for p in params)),
                macs=int(flops // 2),
                alive_neurons=int(alive_mask(m, bn).sum()),
            )
        )
    total = sum(p.numel() for p in model.parameters())
    nonzero = int(sum(int(p.detach().ne(0).sum()) for p in model.parameters()))
    macs = int(sum(counts.get("Global", {}).values()) // 2)
    return ModelSummary(rows, total, nonzero, macs, tuple(input_shape))
