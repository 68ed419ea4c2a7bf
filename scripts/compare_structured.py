#!/usr/bin/env python
"""Structured pruning on a BatchNorm conv net, four methods from one baseline, all measured in one run (issue 14 #6).

Stages:
  1. baseline   ``--baseline PATH``, or a ResNet-20 trained here on Fashion-MNIST (out/baseline.pt, reused on rerun)
  2. methods    each gets the same number of training epochs (``--epochs``):
                (a) SeReNe-LB, prune="neurons"   edgeprune.pipeline.run_compress (loop → surgery → export)
                (b) SeReNe-LB, prune="weights"   the paper's global magnitude threshold, same pipeline
                (c) Torch-Pruning GroupNormPruner with its sparse-learning regularizer (``pruner.regularize(model)``
                    after every backward), then global pruning in small steps until the MACs match (a)'s slim
                    model, then fine-tuning; the epochs are split between sparse learning and fine-tuning
                (d) ℓ2 (weight decay) + prune="neurons", same pipeline
  3. latency    the dense model and every slim model in one ONNX Runtime session each, 1 thread, batch 1, timed in
                alternating blocks (edgeprune.bench.bench_models); speedup = dense ÷ slim median latency, with the
                library's paired block-bootstrap 95 % interval (block k of a slim model against block k of the
                dense one, run back to back)
  4. report     OUT/comparison.json and OUT/comparison.md (printed): test top-1 error, params total / nonzero, MACs,
                .onnx / .7z of the slim model, latency, surviving channels per layer; budget and settings

Resumable: a method whose OUT/<method>/result.json exists is not run again (delete the file to redo it); an
interrupted SeReNe run continues from its state.pt. The latency stage always runs (about a minute).

``--include OTHER/<method>`` (repeatable) adds a slim model trained by another run of this script from the same
baseline (e.g. Torch-Pruning at another --tp-target-ratio) to this run's latency stage and report, as a row of its
own: every model compared in one alternating bench.

Budget of the defaults (ResNet-20, 12,000 training and 3,000 validation images of Fashion-MNIST, 6 baseline epochs,
4 epochs per method, one torch thread): estimated at about 35 minutes on an idle 2-core machine (up to ~45 when every
SeReNe epoch ends in a threshold step), from the CPU time of one step here (0.45 s per batch of 128, so ~42 s per
epoch; ~2 s per 1,000 images evaluated; each bisection evaluates the validation set 10–20 times). Every phase's
seconds are recorded in the output; --train-subset 0 uses all 54,000 images (about 3 min per epoch).

    .venv/bin/python scripts/compare_structured.py --out runs/compare-structured
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeprune import _io  # noqa: E402
from edgeprune._progress import make_progress  # noqa: E402
from edgeprune.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgeprune.data import Batches, load_dataset  # noqa: E402
from edgeprune.data._registry import DataBundle  # noqa: E402
from edgeprune.models import create_model, get_entry, normalize_arch  # noqa: E402
from edgeprune.regularize.config import CompressConfig  # noqa: E402
from edgeprune.summary import summarize  # noqa: E402
from edgeprune.train import evaluate, resolve_device, seed_everything, train_epoch  # noqa: E402

log = logging.getLogger("compare_structured")
T0 = time.time()

# TP's CIFAR recipe (reproduce/main.py + readme, "group_sl"): GroupMagnitudeImportance(p=2, normalizer="max"),
# GroupNormPruner(reg=5e-4, global_pruning=True, pruning_ratio=1.0, iterative_steps=400), SGD momentum 0.9 without
# weight decay during sparse learning, 100 sparse-learning epochs at lr 0.01 decayed ×0.1 at epochs 60 and 80,
# 390 steps per epoch (CIFAR-10, batch 128, drop_last). Its total regularization "dose" Σ lr·reg over the steps is
# what --tp-reg auto keeps when the schedule is compressed into a few epochs.
TP_REF_REG = 5e-4
TP_REF_LR_STEPS = 390 * (60 * 0.01 + 20 * 0.001 + 20 * 0.0001)
TP_ITERATIVE_STEPS = 400


@dataclasses.dataclass(frozen=True)
class Method:
    key: str
    """Folder name under --out and the JSON key."""
    label: str
    kind: str
    """"serene" (edgeprune's pipeline) or "tp" (Torch-Pruning)."""
    update: str = ""
    """CompressConfig.method for "serene" methods."""
    prune: str = ""
    """CompressConfig.prune for "serene" methods."""


METHODS = {
    "a": Method("serene-lb-neurons", "(a) SeReNe-LB, neurons", "serene", "serene-lb", "neurons"),
    "b": Method("serene-lb-weights", "(b) SeReNe-LB, weights (paper)", "serene", "serene-lb", "weights"),
    "c": Method("tp-groupnorm-sl", "(c) Torch-Pruning GroupNorm + SL", "tp"),
    "d": Method("l2-neurons", "(d) ℓ2, neurons", "serene", "l2", "neurons"),
    "e": Method("serene-lb-latency", "(e) SeReNe-LB, neurons ÷ latency", "serene", "serene-lb", "neurons"),
}
"""(e) ranks neurons by the loss-based score ÷ their marginal latency from --latency-table (edgeprune profile);
with --target-speedup it stops at that predicted speedup. Run it before (c) and TP prunes to (e)'s MACs."""


class MethodUnavailable(RuntimeError):
    """The installed edgeprune cannot run this method yet (e.g. CompressConfig has no ``prune`` field)."""


@dataclasses.dataclass
class Settings:
    arch: str = "resnet20-cifar"
    width: int | None = None
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 4
    baseline_epochs: int = 6
    train_subset: int | None = 12_000
    val_subset: int | None = 3_000
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 128
    # SeReNe / ℓ2 through edgeprune (λ, TWT, PWE, η as in docs/serene.md's short-budget LeNet-5 runs)
    lam: float = 1e-4
    twt: float = 0.5
    pwe: int = 1
    lr: float = 0.005
    momentum: float = 0.9
    l2_weight_decay: float = 2e-3
    """η·wd/(1 − m) = 1e-4: ℓ2's per-step shrink equals SeReNe's λ (docs/serene.md)."""
    target_drop: float = 0.01
    # Torch-Pruning
    tp_reg: float | None = None
    """None: scaled so that Σ lr·reg over the sparse-learning steps equals TP's CIFAR recipe."""
    tp_sparse_epochs: int | None = None
    """None: ceil(epochs / 2); the rest fine-tunes."""
    tp_lr: float = 0.01
    tp_finetune_weight_decay: float = 5e-4
    tp_target_ratio: float | None = None
    """Target MACs as a fraction of the dense model's; None: the MACs of (a)'s slim model."""
    macs_tolerance: float = 0.03
    round_channels: int | None = None
    neuron_cost: str = "none"
    """--neuron-cost of the SeReNe / ℓ2 neuron methods (a, d): none or macs."""
    latency_table: str | None = None
    """A latency table (edgeprune profile) of the baseline: method (e) ranks by it; every slim model's latency is
    predicted from it and compared with the measurement."""
    target_speedup: float | None = None
    """(e)'s --target-speedup (predicted, on the table): stop pruning there."""
    """Widths rounded up to multiples of this: surgery keeps a few dead channels (exact), TP prunes with round_to."""
    # latency
    bench_runs: int = 1000
    bench_warmup: int = 50
    bench_block: int = 50
    bench_warmup_seconds: float = 1.0
    """Least warm-up time per model, where edgeprune.bench supports it."""

    def arch_spec(self, data: DataBundle) -> dict:
        kwargs = {"num_classes": data.num_classes}
        params = inspect.signature(get_entry(normalize_arch(self.arch)["name"]).builder).parameters
        if "in_channels" in params and len(data.input_shape) == 3:
            kwargs["in_channels"] = data.input_shape[0]
        if self.width is not None:
            kwargs["width"] = self.width
        return normalize_arch(self.arch, **kwargs)

    def tp_split(self) -> tuple[int, int]:
        sparse = self.tp_sparse_epochs if self.tp_sparse_epochs is not None else math.ceil(self.epochs / 2)
        if not 1 <= sparse <= self.epochs:
            raise SystemExit(f"--tp-sparse-epochs must be in [1, --epochs={self.epochs}], got {sparse}")
        return sparse, self.epochs - sparse


def stamp(msg: str) -> None:
    log.info("[%5.0f s] %s", time.time() - T0, msg)


# ---------------------------------------------------------------------------------------------------------------
# data and baseline


def subset_data(data: DataBundle, train: int | None, val: int | None, seed: int) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    changes = {}
    for name, n in (("train", train), ("val", val)):
        split = getattr(data, name)
        if n is not None and 0 < n < len(split):
            changes[name] = split.subset(torch.randperm(len(split), generator=g)[:n].sort().values)
    return dataclasses.replace(data, **changes)


def train_baseline(s: Settings, data: DataBundle, path: Path) -> Path:
    """``edgeprune train``'s recipe (SGD 0.05, momentum 0.9, weight decay 5e-4, cosine; best validation epoch) on
    the given splits, saved as an edgeprune checkpoint (its test error is measured with the methods', in
    :func:`run`)."""
    device = resolve_device(s.device)
    seed_everything(s.seed)
    model = create_model(s.arch_spec(data)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.baseline_epochs)
    batches = Batches(data.train, s.batch_size, shuffle=True, seed=s.seed, augment=data.augment)
    best = None
    t0 = time.time()
    for epoch in range(s.baseline_epochs):
        batches.set_epoch(epoch)
        tr = train_epoch(model, batches, opt, device, description=f"baseline epoch {epoch + 1}/{s.baseline_epochs}")
        sched.step()
        va = evaluate(model, Batches(data.val, 1000), device)
        stamp(f"baseline epoch {epoch + 1}: train loss {tr['loss']:.4f}, val acc {va['accuracy']:.2%}")
        if best is None or va["accuracy"] > best[0]:
            best = (va["accuracy"], copy.deepcopy(model.state_dict()), epoch + 1)
    model.load_state_dict(best[1])
    meta = {"dataset": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "seed": s.seed, "val_accuracy": best[0], "best_epoch": best[2], "train_seconds": round(time.time() - t0, 1),
            "train_images": len(data.train), "train_config": {"epochs": s.baseline_epochs, "lr": 0.05,
                                                              "momentum": 0.9, "weight_decay": 5e-4,
                                                              "batch_size": s.batch_size, "schedule": "cosine"}}
    save_checkpoint(path, model.cpu(), meta=meta)
    stamp(f"baseline: best validation accuracy {best[0]:.2%} (epoch {best[2]}) → {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# measurements shared by all methods


def describe(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """Params (total, nonzero), MACs (batch 1) and channels per producing layer — of the model as it ships."""
    summ = summarize(model.cpu(), shape)
    return {"params_total": summ.params_total, "params_nonzero": summ.params_nonzero, "macs": summ.macs,
            "layers": [r.name for r in summ.layers], "channels": summ.neurons,
            "alive_channels": summ.alive_neurons}


def export_sizes(model: nn.Module, folder: Path, stem: str, data: DataBundle) -> dict:
    """.onnx and .7z of ``model`` (edgeprune.export.export_all, validated against PyTorch)."""
    from edgeprune.export import export_all

    e = export_all(model.cpu().eval(), folder, stem, tuple(data.input_shape), ("onnx",), real_batch=data.test.x[:16])
    return {"onnx": str(Path(e["artifacts"]["onnx"]["path"])), "onnx_bytes": e["onnx_bytes"],
            "onnx_7z_bytes": e["onnx_7z_bytes"]}


def top1_error(model: nn.Module, data: DataBundle, device) -> float:
    return evaluate(model.to(device), Batches(data.test, 1000), device, description="test")["top1_error"]


# ---------------------------------------------------------------------------------------------------------------
# (a), (b), (d): edgeprune's pipeline


def has_prune_field() -> bool:
    return "prune" in {f.name for f in dataclasses.fields(CompressConfig)}


def serene_config(s: Settings, m: Method) -> tuple[CompressConfig, str | None]:
    """The CompressConfig of a SeReNe / ℓ2 method and a note when the installed edgeprune needed a fallback."""
    kw = dict(method=m.update, twt=s.twt, pwe=s.pwe, lr=s.lr, momentum=s.momentum, batch_size=s.batch_size,
              target_drop=s.target_drop, max_epochs=s.epochs, seed=s.seed, device=s.device)
    if m.update == "l2":
        kw["weight_decay"] = s.l2_weight_decay
    else:
        kw["lam"] = s.lam
    note = None
    if has_prune_field():
        kw["prune"] = m.prune
        if m.prune != "weights":
            kw["neuron_cost"] = s.neuron_cost
        if m.key == METHODS["e"].key:
            if not s.latency_table:
                raise MethodUnavailable("(e) needs --latency-table TABLE (from `edgeprune profile BASELINE`)")
            kw["neuron_cost"] = f"latency:{Path(s.latency_table).resolve()}"
            kw["target_speedup"] = s.target_speedup
    elif m.prune == "weights":
        note = "CompressConfig has no prune field yet: ran the library's only thresholding (weights)"
    else:
        raise MethodUnavailable(f"{m.label} needs CompressConfig.prune='{m.prune}' (issue 14 item 1), "
                                "which this edgeprune does not have yet")
    return CompressConfig(**kw), note


def run_serene(s: Settings, m: Method, base_path: Path, data: DataBundle, folder: Path) -> dict:
    """Alg. 1 → surgery → ONNX export through ``edgeprune.pipeline.run_compress`` into ``folder``."""
    import edgeprune.surgery  # noqa: F401  (registers the slim-model spec so model.pt reloads)
    from edgeprune.pipeline import STATE, StageOptions, run_compress

    config, note = serene_config(s, m)
    t0 = time.time()
    resume = (folder / STATE).exists()
    summary = run_compress(base_path, folder, config, resume=resume, data=data,
                           options=StageOptions(export_formats=("onnx",), report=False,
                                                round_channels=s.round_channels))
    slim_path = folder / "model.pt" if (folder / "model.pt").exists() else folder / "masked.pt"
    slim = load_checkpoint(slim_path).model.eval()
    shape = tuple(data.input_shape)
    exp = summary["export"]["model"]
    return {
        "method": m.key, "label": m.label, "config": config.to_dict(), "note": note,
        "top1_error": summary["pruned"]["top1_error"],
        **describe(slim, shape),
        "onnx": str(folder / "model.onnx"), "onnx_bytes": exp["onnx_bytes"], "onnx_7z_bytes": exp["onnx_7z_bytes"],
        "training_epochs": summary["epochs"],
        "epochs_split": f"{summary['epochs']} regularization epochs" + (
            f" (of {s.epochs}; stopped: {summary.get('stop_reason')})" if summary["epochs"] < s.epochs else ""),
        "serene": {k: summary.get(k) for k in ("met_target", "stop_reason", "thresholds", "val_accuracy",
                                               "target_val_accuracy", "baseline_val_accuracy")},
        "masked_alive_channels": summary["pruned"]["neurons"],
        "surgery": summary.get("surgery") or summary.get("slim"),
        "seconds": round(time.time() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------------------------
# (c): Torch-Pruning's GroupNormPruner with sparse learning


def tp_reg(s: Settings, steps_per_epoch: int, sparse_epochs: int) -> float:
    """--tp-reg, or TP's CIFAR regularization dose (Σ lr·reg) spread over this run's sparse-learning steps."""
    if s.tp_reg is not None:
        return s.tp_reg
    return TP_REF_REG * TP_REF_LR_STEPS / (s.tp_lr * steps_per_epoch * sparse_epochs)


def tp_target(s: Settings, dense_macs: int, a: dict | None, e: dict | None = None) -> tuple[int, str]:
    """TP's MACs target and how it was chosen: --tp-target-ratio × dense, else the MACs of (e)'s slim model when
    (e) ran first, else those of (a), else half the dense MACs (TP's CIFAR benchmarks prune ResNet-56 to 2.1–2.6×
    fewer MACs)."""
    if s.tp_target_ratio is not None:
        return int(s.tp_target_ratio * dense_macs), f"{s.tp_target_ratio:g} × dense MACs (--tp-target-ratio)"
    if e and "skipped" not in e:
        return int(e["macs"]), "the MACs of (e)"
    if a and "skipped" not in a:
        return int(a["macs"]), "the MACs of (a)"
    return int(0.5 * dense_macs), "0.5 × dense MACs (method a did not run)"


def load_included(folder: Path, dense: dict) -> tuple[str, dict]:
    """A method folder of another run of this script (``OTHER/<method>`` with its result.json and model.onnx), to be
    benched and reported next to this run's methods: returns (key, result). It must be pruned from the same
    baseline: same layers, and, when OTHER/comparison.json is there, the same dense test error and MACs."""
    folder = Path(folder)
    done = folder / "result.json"
    if not done.is_file():
        raise SystemExit(f"--include {folder}: no result.json there; give a method folder of a finished run "
                         "(e.g. runs/OTHER/tp-groupnorm-sl)")
    r = json.loads(done.read_text())
    if "skipped" in r:
        raise SystemExit(f"--include {folder}: that method was skipped ({r['skipped']}); include one that ran")
    onnx = Path(r["onnx"])
    if not onnx.is_file():
        onnx = folder / onnx.name
        if not onnx.is_file():
            raise SystemExit(f"--include {folder}: its model {r['onnx']} is missing; rerun that method")
    if r["layers"] != dense["layers"]:
        raise SystemExit(f"--include {folder}: its layers are not this baseline's; include a run of the same "
                         "--arch and baseline")
    other = folder.parent / "comparison.json"
    if other.is_file():
        od = json.loads(other.read_text())["dense"]
        if od["macs"] != dense["macs"] or abs(od["top1_error"] - dense["top1_error"]) > 1e-9:
            raise SystemExit(f"--include {folder}: pruned from another baseline (dense test error "
                             f"{od['top1_error']:.2%}, {od['macs']:,} MACs; here {dense['top1_error']:.2%}, "
                             f"{dense['macs']:,}); include a run of the same --baseline")
    tag = folder.parent.name
    key = f"{r['method']}@{tag}"
    label = r["label"]
    r = {**r, "onnx": str(onnx), "label": f"{label} [{tag}]", "short": f"{label.split(' ', 1)[0]} {tag}",
         "included_from": str(folder)}
    return key, r


def output_layer(model: nn.Module) -> nn.Module:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def prune_to_macs(pruner, model: nn.Module, shape: tuple[int, ...], target_macs: int):
    """Call ``pruner.step()`` (one 1/400 slice of the global ranking each) until the MACs reach ``target_macs``;
    return the model of the step closest to the target (the last one above or the first one at/below it), its MACs,
    the steps taken and the pruning history of that model."""
    macs = summarize(model, shape).macs
    prev = None
    steps = 0
    with make_progress() as progress:
        task = progress.add_task("TP prune", total=pruner.iterative_steps, info="")
        while macs > target_macs and pruner.current_step < pruner.iterative_steps:
            prev = (copy.deepcopy(model), macs, steps, list(pruner.pruning_history()))
            pruner.step()
            steps += 1
            macs = summarize(model, shape).macs
            progress.update(task, advance=1, info=f"MACs {macs:,} → {target_macs:,}")
    history = list(pruner.pruning_history())
    if prev is not None and abs(prev[1] - target_macs) < abs(macs - target_macs):
        return prev[0], prev[1], prev[2], prev[3]
    return model, macs, steps, history


def run_torch_pruning(s: Settings, m: Method, base_path: Path, data: DataBundle, folder: Path,
                      target_macs: int, target_note: str) -> dict:
    """Sparse learning with ``pruner.regularize(model)`` after every backward, global group pruning to
    ``target_macs``, fine-tuning (best validation epoch kept), then the same measurements as the other methods."""
    import torch_pruning as tp

    device = resolve_device(s.device)
    seed_everything(s.seed)
    t0 = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(base_path)
    spec = copy.deepcopy(loaded.arch)
    model = loaded.model.to(device)
    shape = tuple(data.input_shape)
    sparse_epochs, finetune_epochs = s.tp_split()
    batches = Batches(data.train, s.batch_size, shuffle=True, seed=s.seed, augment=data.augment)
    reg = tp_reg(s, len(batches), sparse_epochs)
    example = torch.zeros(1, *shape, device=device)
    importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer="max")
    pruner = tp.pruner.GroupNormPruner(model, example, importance=importance, reg=reg, global_pruning=True,
                                       pruning_ratio=1.0, iterative_steps=TP_ITERATIVE_STEPS, max_pruning_ratio=1.0,
                                       ignored_layers=[output_layer(model)], round_to=s.round_channels)
    rows = []
    # 1. sparse learning: TP's regularizer adds reg·γ·θ to the gradients of every coupled group (no weight decay).
    opt = torch.optim.SGD(model.parameters(), lr=s.tp_lr, momentum=0.9, weight_decay=0.0)
    for epoch in range(sparse_epochs):
        batches.set_epoch(epoch)
        tr = train_epoch(model, batches, opt, device, before_step=lambda *_: pruner.regularize(model),
                         description=f"TP sparse learning {epoch + 1}/{sparse_epochs}")
        va = evaluate(model, Batches(data.val, 1000), device)
        rows.append({"phase": "sparse", "epoch": epoch + 1, "train_loss": tr["loss"], "val_accuracy": va["accuracy"]})
        stamp(f"TP sparse learning epoch {epoch + 1}: train loss {tr['loss']:.4f}, val acc {va['accuracy']:.2%}")
    # 2. pruning: global ranking of group norms, small steps until the MACs match. The network at the end of sparse
    # learning is pruned (TP's script reloads its best-accuracy sparse-learning epoch instead; over two epochs that
    # would mostly undo the regularization).
    model.eval()
    dense_macs = summarize(model, shape).macs
    model, macs, steps, history = prune_to_macs(pruner, model, shape, target_macs)
    del pruner
    if hasattr(model, "edgeprune_arch"):
        del model.edgeprune_arch  # the zoo spec describes the dense widths, not these
    va = evaluate(model, Batches(data.val, 1000), device)
    rows.append({"phase": "pruned", "steps": steps, "macs": macs, "val_accuracy": va["accuracy"]})
    matched = abs(macs / target_macs - 1.0) <= s.macs_tolerance
    stamp(f"TP pruned in {steps} steps: MACs {dense_macs:,} → {macs:,} (target {target_macs:,}), "
          f"val acc {va['accuracy']:.2%}")
    if not matched:
        log.warning("TP's MACs are %+.1f %% off the target (tolerance ±%.0f %%): its channel steps are too coarse "
                    "here, or the target is below one channel per layer", 100 * (macs / target_macs - 1),
                    100 * s.macs_tolerance)
    # 3. fine-tuning: TP's recipe (lr 0.01, momentum 0.9, weight decay 5e-4), cosine over the remaining epochs.
    best = (va["accuracy"], copy.deepcopy(model.state_dict()), 0)
    if finetune_epochs:
        opt = torch.optim.SGD(model.parameters(), lr=s.tp_lr, momentum=0.9, weight_decay=s.tp_finetune_weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=finetune_epochs)
        best = (-1.0, None, 0)
        for epoch in range(finetune_epochs):
            batches.set_epoch(sparse_epochs + epoch)
            tr = train_epoch(model, batches, opt, device, description=f"TP fine-tune {epoch + 1}/{finetune_epochs}")
            sched.step()
            va = evaluate(model, Batches(data.val, 1000), device)
            rows.append({"phase": "finetune", "epoch": epoch + 1, "train_loss": tr["loss"],
                         "val_accuracy": va["accuracy"]})
            stamp(f"TP fine-tune epoch {epoch + 1}: train loss {tr['loss']:.4f}, val acc {va['accuracy']:.2%}")
            if va["accuracy"] > best[0]:
                best = (va["accuracy"], copy.deepcopy(model.state_dict()), epoch + 1)
    model.load_state_dict(best[1])
    model.eval()
    err = top1_error(model, data, device)
    torch.save({"format": "compare-structured-tp", "arch": spec, "pruning_history": history,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, folder / "model.pt")
    return {
        "method": m.key, "label": m.label, "note": None,
        "config": {"pruner": "GroupNormPruner", "importance": "GroupMagnitudeImportance(p=2, normalizer='max')",
                   "reg": reg, "reg_rule": "--tp-reg" if s.tp_reg is not None else
                   f"TP's CIFAR dose {TP_REF_REG:g}·{TP_REF_LR_STEPS:.1f} lr-steps ÷ (lr·sparse steps)",
                   "alpha": 2 ** 4, "global_pruning": True, "pruning_ratio": 1.0,
                   "iterative_steps": TP_ITERATIVE_STEPS, "ignored_layers": ["output layer"],
                   "round_to": s.round_channels,
                   "sparse_lr": s.tp_lr, "finetune_lr": s.tp_lr, "finetune_weight_decay": s.tp_finetune_weight_decay,
                   "momentum": 0.9, "batch_size": s.batch_size, "target_macs": target_macs,
                   "target": target_note, "torch_pruning": tp.__version__},
        "top1_error": err,
        **describe(model, shape),
        **export_sizes(model, folder, "model", data),
        "training_epochs": sparse_epochs + finetune_epochs,
        "epochs_split": f"{sparse_epochs} sparse learning + {finetune_epochs} fine-tune",
        "tp": {"prune_steps": steps, "macs_target": target_macs, "macs": macs,
               "macs_rel_error": macs / target_macs - 1.0, "macs_matched": matched,
               "macs_tolerance": s.macs_tolerance, "best_finetune_epoch": best[2], "history": rows},
        "seconds": round(time.time() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------------------------
# latency


def measure_latency(s: Settings, dense_onnx: Path, slim: dict[str, str]) -> dict:
    """One bench_models run: the dense model (baseline) and every slim model, alternating blocks, 1 thread; the
    speedup interval is edgeprune.bench's paired block bootstrap (each slim block against the dense block of the
    same round)."""
    from edgeprune.bench import ModelSource, bench_models

    sources = [ModelSource(dense_onnx, label="dense", role="baseline")]
    sources += [ModelSource(path, label=key) for key, path in slim.items()]
    res = bench_models(sources, runtime="onnxruntime", runs=s.bench_runs, warmup=s.bench_warmup, threads=1,
                       batch_size=1, block_size=s.bench_block, seed=s.seed, warmup_seconds=s.bench_warmup_seconds)
    out = {"dense": {"median_ms": res.models[0].stats["median_ms"], "mean_ms": res.models[0].stats["mean_ms"]},
           "bench": res.to_dict()}
    for m in res.models[1:]:
        sp = m.speedup
        out[m.label] = {"median_ms": m.stats["median_ms"], "mean_ms": m.stats["mean_ms"],
                        "speedup_median": sp["median"], "speedup_ci95": sp["ci95"]["median"],
                        "interval_unit": sp.get("interval_unit"), "block_pairs": sp.get("block_pairs"),
                        "interval_method": sp.get("method"), "interval_note": sp.get("note")}
    return out


def versus(latency: dict, ref: str, seed: int = 0) -> dict:
    """Every other slim model against ``ref`` in the same alternating run: ref's median latency ÷ the model's (above
    1: the model is faster than ref), with edgeprune.bench's paired block bootstrap (block k of ref against block k
    of the model, run in the same round)."""
    from edgeprune.bench.stats import speedup, split_blocks

    def blocks(m: dict):
        counts = m.get("block_counts")
        return split_blocks(m["samples_ms"], counts) if counts is not None else list(m["samples_ms"])

    models = {m["label"]: m for m in latency["bench"]["models"]}
    out: dict = {"ref": ref}
    for label, m in models.items():
        if label in ("dense", ref):
            continue
        sp = speedup(blocks(models[ref]), blocks(m), seed=seed)
        out[label] = {"ratio_median": sp["median"], "ci95": sp["ci95"]["median"],
                      "interval_unit": sp.get("interval_unit"), "block_pairs": sp.get("block_pairs")}
    return out


def predict_latency(s: Settings, results: dict, latency: dict) -> dict:
    """Each slim model's latency predicted from the table (its group widths) against this run's measurement:
    ``error`` = predicted ÷ measured − 1 (absolute ms: the table was measured at another time, under another load)
    and ``error_scaled`` = measured speedup ÷ predicted speedup − 1 (the prediction scaled to this run's dense
    median). A group's width is read off its root layer's channels in the method's result (Torch-Pruning's model
    is not rebuilt)."""
    from edgeprune.latency import LatencyTable

    table = LatencyTable.load(s.latency_table)
    out = {"table": s.latency_table, "table_dense_ms": table.baseline_ms}
    for key, r in results.items():
        if "skipped" in r or key not in latency:
            continue
        width_of = dict(zip(r["layers"], r["channels"]))  # a group's width is its root layer's output channels
        if any(g.root not in width_of for g in table.groups):
            out[key] = {"skipped": "its layers are not the table's"}
            continue
        widths = {g.root: width_of[g.root] for g in table.groups}
        pred = table.predict(widths)
        meas = latency[key]["median_ms"]
        pred_speedup = table.baseline_ms / pred
        out[key] = {"predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1.0,
                    "predicted_speedup": pred_speedup, "measured_speedup": latency[key]["speedup_median"],
                    "error_scaled": latency[key]["speedup_median"] / pred_speedup - 1.0}
    return out


# ---------------------------------------------------------------------------------------------------------------
# report


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def markdown(report: dict) -> str:
    dense = report["dense"]
    lat = report.get("latency") or {}
    st = report["settings"]
    dense_latency = (f"{lat['dense']['median_ms']:.3f} ms", "1.00×") if lat else ("–", "–")
    lines = [
        f"### Structured pruning on {st['arch']} / {st['dataset']} — one baseline, four methods",
        "",
        "| method | epochs | test top-1 error | Δ error | params total | params nonzero | compression | MACs "
        "| MACs ÷ dense | .onnx | .7z | median latency | speedup (dense ÷ slim, median) [95 % interval, blocks] |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| dense baseline | {dense.get('epochs') or '?'} | {dense['top1_error']:.2%} | – "
        f"| {dense['params_total']:,} | {dense['params_nonzero']:,} | 1.00× | {dense['macs']:,} | 1.00 "
        f"| {_kb(dense['onnx_bytes'])} | {_kb(dense['onnx_7z_bytes'])} | {dense_latency[0]} | {dense_latency[1]} |",
    ]
    for key, r in report["methods"].items():
        if "skipped" in r:
            lines.append(f"| {r['label']} | – | skipped: {r['skipped']} |" + " – |" * 10)
            continue
        speed, med = "–", "–"
        if key in lat:
            lo, hi = lat[key]["speedup_ci95"]
            unit = "" if lat[key]["interval_unit"] == "block" else " (per run: too few blocks)"
            speed = f"{lat[key]['speedup_median']:.2f}× [{lo:.2f}, {hi:.2f}]{unit}"
            med = f"{lat[key]['median_ms']:.3f} ms"
        lines.append(
            f"| {r['label']} | {r['epochs_split']} | {r['top1_error']:.2%} "
            f"| {100 * (r['top1_error'] - dense['top1_error']):+.2f} pt | {r['params_total']:,} "
            f"| {r['params_nonzero']:,} | {dense['params_total'] / max(r['params_nonzero'], 1):.2f}× | {r['macs']:,} "
            f"| {r['macs'] / dense['macs']:.2f} | {_kb(r['onnx_bytes'])} | {_kb(r['onnx_7z_bytes'])} | {med} "
            f"| {speed} |")
    ran = {k: r for k, r in report["methods"].items() if "skipped" not in r}
    lines += ["", "Channels per layer of the slim model (dense widths first):", "",
              "| layer | dense | " + " | ".join(r.get("short") or r["label"].split(" ", 1)[0] for r in ran.values())
              + " |",
              "|---|---:|" + "---:|" * len(ran)]
    for i, name in enumerate(dense["layers"]):
        cells = []
        for r in ran.values():
            cells.append(str(r["channels"][i]) if i < len(r["channels"]) and r["layers"][i] == name else "?")
        lines.append(f"| {name} | {dense['channels'][i]} | " + " | ".join(cells) + " |")
    pred = lat.get("predicted") if lat else None
    if pred:
        lines += ["", f"Latency predicted from the table ({pred['table']}, dense {pred['table_dense_ms']:.4f} ms) vs "
                      "measured here:", "",
                  "| method | predicted | measured | error (ms) | predicted speedup | measured speedup "
                  "| error (speedup) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for key, r in report["methods"].items():
            p = pred.get(key)
            if not p:
                continue
            if "skipped" in p:
                lines.append(f"| {r['label']} | skipped: {p['skipped']} | | | | | |")
                continue
            lines.append(f"| {r['label']} | {p['predicted_ms']:.4f} ms | {p['measured_ms']:.4f} ms "
                         f"| {100 * p['error']:+.1f} % | {p['predicted_speedup']:.2f}× | {p['measured_speedup']:.2f}× "
                         f"| {100 * p['error_scaled']:+.1f} % |")
    vs = lat.get("versus") if lat else None
    if vs:
        ref = report["methods"][vs["ref"]]
        lines += ["", f"Latency against {ref['label']} in the same alternating run ({ref['label'].split(' ', 1)[0]} "
                      "median ÷ this model's; above 1: this model is faster; paired block bootstrap):", "",
                  "| method | test top-1 error | MACs | median latency | ratio [95 % interval] |",
                  "|---|---:|---:|---:|---:|"]
        for key, v in vs.items():
            if key == "ref":
                continue
            r, (lo, hi) = report["methods"][key], v["ci95"]
            unit = "" if v["interval_unit"] == "block" else " (per run: too few blocks)"
            lines.append(f"| {r['label']} | {r['top1_error']:.2%} | {r['macs']:,} "
                         f"| {lat[key]['median_ms']:.3f} ms | {v['ratio_median']:.3f} [{lo:.3f}, {hi:.3f}]{unit} |")
    lines += ["", _budget_text(report)]
    notes = [f"- {r['label']}: {r['note']}" for r in report["methods"].values() if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def _budget_text(report: dict) -> str:
    st, b = report["settings"], report["budget"]
    sub = (f"{b['train_images']:,} of {b['train_images_full']:,} training images (seeded subset)"
           if b["train_images"] < b["train_images_full"] else f"all {b['train_images']:,} training images")
    parts = [
        f"Budget: {sub}, {b['val_images']:,} validation images, test on {b['test_images']:,}; baseline "
        f"{report['dense'].get('epochs') or '?'} epochs ({report['dense']['path']}); every method {st['epochs']} "
        f"training epochs in all; {st['threads']} torch thread(s) on {report['environment'].get('cpu', '?')}; "
        f"{b['total_seconds'] / 60:.1f} min for this run (per phase, s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in b["seconds"].items()) + ").",
        f"SeReNe / ℓ2 (edgeprune compress): λ {st['lam']:g}, TWT {st['twt']:g}, PWE {st['pwe']}, "
        f"η {st['lr']:g}, momentum {st['momentum']:g}, batch {st['batch_size']}, target drop "
        f"{100 * st['target_drop']:g} pt (validation), ℓ2 weight decay {st['l2_weight_decay']:g}; neurons ranked by "
        f"the loss-based score" + (" ÷ MACs" if st.get("neuron_cost") == "macs" else "")
        + (f"; (e) ÷ marginal latency from {st['latency_table']}" if st.get("latency_table") else "")
        + (f", stopping at a predicted {st['target_speedup']:g}× speedup" if st.get("target_speedup") else "")
        + "; slim widths "
        + (f"rounded up to multiples of {st['round_channels']}." if st.get("round_channels")
           else "exact (no rounding)."),
    ]
    for key, tp in report["methods"].items():
        if "skipped" in tp or "tp" not in tp:
            continue
        c = tp["config"]
        who = f"{tp['label']}, from {tp['included_from']}: " if "included_from" in tp else ""
        parts.append(
            f"{who}Torch-Pruning {c['torch_pruning']}: GroupNormPruner(reg {c['reg']:.3g}, α 16, global, 400 "
            f"iterative steps), {c['importance']}; {tp['epochs_split']} epochs (lr {c['sparse_lr']:g}, momentum 0.9; "
            f"fine-tune weight decay {c['finetune_weight_decay']:g}, cosine); pruned in {tp['tp']['prune_steps']} "
            f"steps to {tp['macs']:,} MACs vs target {c['target_macs']:,} ({c['target']}; "
            f"{100 * tp['tp']['macs_rel_error']:+.1f} %, "
            f"{'within' if tp['tp']['macs_matched'] else 'OUTSIDE'} ±{100 * tp['tp']['macs_tolerance']:g} %).")
    included = [r for r in report["methods"].values() if "included_from" in r and "tp" not in r]
    if included:
        parts.append("Included from other runs of the same baseline (trained there, benched here): "
                     + "; ".join(f"{r['label']} from {r['included_from']}" for r in included) + ".")
    lat = report.get("latency")
    if lat:
        bm = lat["bench"]
        sources = sorted({str(v["interval_method"]) for k, v in lat.items()
                          if k not in ("dense", "bench", "predicted", "versus")})
        parts.append(f"Latency: ONNX Runtime, 1 thread, batch 1, {bm['runs']} runs per model after {bm['warmup']} "
                     f"warm-up, alternating blocks of {bm['block_size']} (all models in one process); speedup = "
                     f"dense median ÷ slim median; 95 % interval (edgeprune.bench): {'; '.join(sources)}.")
    parts.append(f"Command: `{report['command']}`")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# driver


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=d.arch)
    ap.add_argument("--width", type=int, default=None, help="base channels for architectures that take width")
    ap.add_argument("--dataset", default=d.dataset)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--baseline", help="a trained checkpoint of --arch to reuse (default: train one into OUT)")
    ap.add_argument("--baseline-epochs", type=int, default=d.baseline_epochs)
    ap.add_argument("--epochs", type=int, default=d.epochs, help="training epochs every method gets in all")
    ap.add_argument("--train-subset", type=int, default=d.train_subset,
                    help="training images used (seeded subset; 0 = all)")
    ap.add_argument("--val-subset", type=int, default=d.val_subset,
                    help="validation images used by thresholding and model selection (seeded subset; 0 = all)")
    ap.add_argument("--methods", default="a,b,c,d", help="which of a,b,c,d,e to run (e: latency-aware, needs "
                                                         "--latency-table; list it before c)")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--threads", type=int, default=d.threads, help="torch threads for training")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", default="runs/compare-structured")
    ap.add_argument("--lam", type=float, default=d.lam)
    ap.add_argument("--twt", type=float, default=d.twt)
    ap.add_argument("--pwe", type=int, default=d.pwe)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--target-drop", type=float, default=d.target_drop)
    ap.add_argument("--l2-weight-decay", type=float, default=d.l2_weight_decay)
    ap.add_argument("--tp-reg", type=float, default=None, help="default: TP's CIFAR dose over this run's steps")
    ap.add_argument("--tp-sparse-epochs", type=int, default=None, help="default: half of --epochs, rounded up")
    ap.add_argument("--tp-lr", type=float, default=d.tp_lr)
    ap.add_argument("--tp-target-ratio", type=float, default=None,
                    help="TP's target MACs ÷ dense MACs (default: the MACs of method a)")
    ap.add_argument("--macs-tolerance", type=float, default=d.macs_tolerance,
                    help="how far TP's MACs may be from the target (fraction) before the report flags it")
    ap.add_argument("--round-channels", type=int, default=None,
                    help="round slim widths up to multiples of N (surgery) / prune in multiples of N (TP round_to); "
                         "odd widths can make ONNX Runtime slower than the dense model")
    ap.add_argument("--neuron-cost", default=d.neuron_cost, choices=("none", "macs"),
                    help="rank neurons by loss change ÷ MACs for methods a and d (edgeprune's --neuron-cost)")
    ap.add_argument("--latency-table", default=None,
                    help="latency table of the baseline (edgeprune profile): method e ranks by it, and every slim "
                         "model's latency is predicted from it next to the measurement")
    ap.add_argument("--target-speedup", type=float, default=None,
                    help="method e stops pruning at this predicted speedup (compress --target-speedup)")
    ap.add_argument("--bench-runs", type=int, default=d.bench_runs)
    ap.add_argument("--include", action="append", default=[], metavar="DIR",
                    help="a method folder of another run of this script from the same baseline (e.g. "
                         "runs/OTHER/tp-groupnorm-sl): its slim model is benched in this run's alternating "
                         "blocks and reported as a row of its own (repeatable)")
    args = ap.parse_args(argv)
    s = Settings(arch=args.arch, width=args.width, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                 baseline_epochs=args.baseline_epochs, train_subset=args.train_subset or None,
                 val_subset=args.val_subset or None, seed=args.seed, device=args.device, threads=args.threads,
                 lam=args.lam, twt=args.twt, pwe=args.pwe, lr=args.lr, target_drop=args.target_drop,
                 l2_weight_decay=args.l2_weight_decay, tp_reg=args.tp_reg, tp_sparse_epochs=args.tp_sparse_epochs,
                 tp_lr=args.tp_lr, tp_target_ratio=args.tp_target_ratio, macs_tolerance=args.macs_tolerance,
                 round_channels=args.round_channels, neuron_cost=args.neuron_cost, bench_runs=args.bench_runs,
                 latency_table=args.latency_table, target_speedup=args.target_speedup)
    if s.epochs < 1 or s.baseline_epochs < 1:
        raise SystemExit("--epochs and --baseline-epochs must be at least 1")
    s.tp_split()
    return s, args


def run(s: Settings, out: Path, data: DataBundle, baseline: Path | None = None, methods: str = "a,b,c,d",
        command: str = "", full_train_images: int | None = None, include: list[str] | tuple = ()) -> dict:
    """Every stage into ``out``; returns the report (also written as comparison.json / comparison.md).
    ``include``: method folders of other runs (load_included) benched and reported after this run's methods."""
    from edgeprune.bench.environment import cpu_model

    t_start = time.time()
    seconds: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(s.threads)
    device = resolve_device(s.device)
    shape = tuple(data.input_shape)

    t = time.time()
    base_path = Path(baseline) if baseline else out / "baseline.pt"
    if not base_path.exists():
        if baseline:
            raise SystemExit(f"--baseline {baseline}: no such file")
        train_baseline(s, data, base_path)
    base = load_checkpoint(base_path)
    dense_path = out / "baseline.onnx"
    dense = {"top1_error": top1_error(base.model, data, device), **describe(base.model, shape),
             **export_sizes(base.model, out, "baseline", data), "path": str(base_path),
             "epochs": (base.meta.get("train_config") or {}).get("epochs"),
             "train_images": base.meta.get("train_images")}
    seconds["baseline"] = time.time() - t
    stamp(f"dense: test error {dense['top1_error']:.2%}, {dense['macs']:,} MACs, channels {dense['channels']}")

    included: dict[str, dict] = {}  # checked before any training, reported after this run's methods
    for folder in include:
        key, r = load_included(Path(folder), dense)
        if key in included:
            raise SystemExit(f"--include {folder}: given twice")
        included[key] = r
        stamp(f"{r['label']}: included from {folder} (test error {r['top1_error']:.2%}, MACs {r['macs']:,})")

    results: dict[str, dict] = {}
    for letter in [x.strip() for x in methods.split(",") if x.strip()]:
        if letter not in METHODS:
            raise SystemExit(f"unknown method {letter!r}; choose from {', '.join(METHODS)}")
        m = METHODS[letter]
        folder = out / m.key
        done = folder / "result.json"
        if done.exists():
            results[m.key] = json.loads(done.read_text())
            stamp(f"{m.label}: reusing {done}")
            continue
        t = time.time()
        stamp(f"{m.label}: start")
        try:
            if m.kind == "serene":
                r = run_serene(s, m, base_path, data, folder)
            else:
                target, note = tp_target(s, dense["macs"], results.get(METHODS["a"].key),
                                         results.get(METHODS["e"].key))
                r = run_torch_pruning(s, m, base_path, data, folder, target, note)
        except MethodUnavailable as exc:
            stamp(f"{m.label}: skipped ({exc})")
            results[m.key] = {"method": m.key, "label": m.label, "skipped": str(exc)}
            continue
        seconds[m.key] = time.time() - t
        _io.write_json(done, r)
        results[m.key] = r
        stamp(f"{m.label}: test error {r['top1_error']:.2%}, MACs {r['macs']:,}, {seconds[m.key]:.0f} s")

    results.update(included)

    t = time.time()
    slim = {k: r["onnx"] for k, r in results.items() if "skipped" not in r}
    latency = measure_latency(s, dense_path, slim) if slim else None
    if latency and s.latency_table:
        latency["predicted"] = predict_latency(s, results, latency)
    if latency and METHODS["e"].key in latency and len(slim) > 1:
        latency["versus"] = versus(latency, METHODS["e"].key, seed=s.seed)
    seconds["latency"] = time.time() - t
    report = {
        "settings": dataclasses.asdict(s),
        "command": command,
        "environment": {"cpu": cpu_model(), "threads": s.threads, "torch": torch.__version__},
        "budget": {"train_images": len(data.train), "train_images_full": full_train_images or len(data.train),
                   "val_images": len(data.val), "test_images": len(data.test),
                   "seconds": {k: round(v, 1) for k, v in seconds.items()},
                   "total_seconds": round(time.time() - t_start, 1)},
        "dense": dense,
        "methods": results,
        "latency": latency,
    }
    # Seconds of methods reused from an earlier invocation come from their result.json.
    for k, r in results.items():
        if k not in seconds and "seconds" in r and "included_from" not in r:
            report["budget"]["seconds"][k] = r["seconds"]
    _io.write_json(out / "comparison.json", report)
    text = markdown(report)
    _io.write_text(out / "comparison.md", text + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    s, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    full = load_dataset(s.dataset, s.data_dir, seed=s.seed)
    data = subset_data(full, s.train_subset, s.val_subset, s.seed)
    stamp(f"{s.dataset}: {len(data.train):,} training / {len(data.val):,} validation / {len(data.test):,} test images")
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python", "scripts/compare_structured.py", *given])
    report = run(s, Path(args.out), data, baseline=args.baseline, methods=args.methods, command=command,
                 full_train_images=len(full.train), include=args.include)
    print(markdown(report))
    print(f"\n{report['budget']['total_seconds'] / 60:.1f} min; results in {Path(args.out) / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
