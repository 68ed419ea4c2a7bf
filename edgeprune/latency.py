"""A latency model of the target device: how each prunable neuron group's width changes the whole model's latency.

``edgeprune profile`` narrows one coupled neuron group at a time (every group of
:func:`edgeprune.threshold.neurons.neuron_groups`: a layer's output channels with their BatchNorm and everything tied
to them by residual additions), cuts the dead channels out with surgery — rounded as the compress run will round
them, so the consumers' inputs shrink too —, and times every variant against the dense model in one alternating
benchmark run with the protocol and runners of ``edgeprune bench`` (locally through ONNX Runtime, or on a phone
over ADB). The lookup table (JSON, :data:`SCHEMA`) holds, per group, the measured widths and the latency change of
the whole model at each, in milliseconds, with the device record and the protocol.

The model the table stands for is **multiplicative**: each group's measured curve is a latency *ratio*
``r_g(w) = (baseline_ms + Δ_g(w)) / baseline_ms`` (1 at full width), and the latency of a network whose groups have
widths ``w_g`` is

    predicted(w) = baseline_ms · Π_g max(r_g(w_g), RATIO_FLOOR),   Δ_g(size_g) = 0,

where ``Δ_g`` interpolates the measured changes linearly between measured widths (and extrapolates the last segment
below the narrowest). For one narrowed group this is exactly the measured latency; for several it never goes below
zero (every factor is positive) and it saves less than the sum of the single-group savings: a layer whose input
and output channels both shrink costs about ``w_in · w_out``, which the product of the two ratios models and the sum
of the two savings double-counts. ``RATIO_FLOOR`` (5 %) bounds a single group's extrapolated ratio: no group can
make the model run more than 20× faster by itself.

A neuron's *marginal latency* in group g at ``a`` alive neurons is the slope of the segment
at or below ``a``: the milliseconds one neuron fewer buys, ``(Δ_g(hi) − Δ_g(lo)) / (hi − lo)``; segments that
measured no gain (noise, or a width that runs no faster) get a floor of 1 % of the largest mean slope of any
group, so every cost stays positive and such neurons rank as nearly free of gain. Widths are rounded up to the
table's ``round_channels`` before they are looked up, as surgery rounds them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from . import _io
from .errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = "edgeprune-latency-table/1"
UNITS = {"latency": "ms (median of the timed runs, batch 1)", "width": "channels (neurons of the group)",
         "marginal": "ms per neuron"}
FLOOR = 0.01
"""A segment's slope is at least FLOOR × the largest mean slope of any group (see the module docstring)."""
DEFAULT_FRACTIONS = (0.75, 0.5, 0.25)
RATIO_FLOOR = 0.05
"""The smallest latency ratio one group's factor of the prediction can take (see the module docstring)."""


@dataclasses.dataclass
class GroupEntry:
    """One coupled neuron group's measured latency curve."""

    root: str
    size: int
    members: list[str]
    consumers: list[str]
    widths: list[int]
    """Measured widths, widest (``size``) first."""
    latency_ms: list[float]
    """The whole model's median latency with this group at each width (the others dense)."""
    delta_ms: list[float]
    """latency_ms − the dense model's median in the same run (0 at ``size``)."""

    def delta(self, width: float) -> float:
        """Δ(width) by linear interpolation between measured widths; below the narrowest, its segment extended."""
        ws, ds = self.widths, self.delta_ms
        if width >= ws[0] or len(ws) == 1:
            return 0.0 if width >= ws[0] else ds[-1]
        for i in range(1, len(ws)):
            hi, lo = ws[i - 1], ws[i]
            if width >= lo:
                return ds[i - 1] + (ds[i] - ds[i - 1]) * (hi - width) / (hi - lo)
        hi, lo = ws[-2], ws[-1]
        return ds[-1] + (ds[-1] - ds[-2]) * (lo - width) / (hi - lo)

    def slope(self, width: float) -> float:
        """Milliseconds saved per neuron removed at ``width`` (the measured segment at or below it)."""
        ws, ds = self.widths, self.delta_ms
        if len(ws) < 2:
            return 0.0
        for i in range(1, len(ws)):
            if width > ws[i]:
                return (ds[i - 1] - ds[i]) / (ws[i - 1] - ws[i])
        return (ds[-2] - ds[-1]) / (ws[-2] - ws[-1])

    def mean_slope(self) -> float:
        return (self.delta_ms[0] - self.delta_ms[-1]) / (self.widths[0] - self.widths[-1]) if len(self.widths) > 1 \
            else 0.0


@dataclasses.dataclass
class LatencyTable:
    """A profiled latency model of one network on one device (see the module docstring)."""

    baseline_ms: float
    groups: list[GroupEntry]
    device: dict
    protocol: dict
    model: dict
    round_channels: int | None = None
    seconds: float | None = None
    created: str | None = None
    schema: str = SCHEMA
    units: dict = dataclasses.field(default_factory=lambda: dict(UNITS))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "the latency table") -> "LatencyTable":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ConfigError(f"{source} is not an edgeprune latency table (schema {SCHEMA}); make one with "
                              "`edgeprune profile MODEL --out TABLE.json`")
        try:
            groups = [GroupEntry(**g) for g in data["groups"]]
            fields = {f.name for f in dataclasses.fields(cls)} - {"groups"}
            table = cls(groups=groups, **{k: v for k, v in data.items() if k in fields})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{source} is malformed ({exc}); profile the model again") from None
        for g in table.groups:
            if not (g.widths and g.widths[0] == g.size and len(g.widths) == len(g.latency_ms) == len(g.delta_ms)
                    and all(a > b for a, b in zip(g.widths, g.widths[1:]))):
                raise ConfigError(f"{source}: group {g.root} has inconsistent widths / latencies; profile again")
        return table

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"latency table {path} not found; make one with `edgeprune profile MODEL --out "
                              f"{path}`") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"latency table {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> Path:
        return _io.write_json(Path(path), self.to_dict())

    # --- the model ----------------------------------------------------------------------------------------------

    def rounded(self, width: int) -> int:
        r = self.round_channels or 1
        return int(math.ceil(width / r) * r)

    def entry(self, root: str) -> GroupEntry:
        for g in self.groups:
            if g.root == root:
                return g
        raise KeyError(root)

    def predict(self, widths: dict[str, int]) -> float:
        """Predicted latency (ms) with these group widths (root → alive neurons; groups not given stay dense):
        ``baseline_ms · Π_g max(1 + Δ_g(w_g) / baseline_ms, RATIO_FLOOR)`` — positive, see the module docstring."""
        total = self.baseline_ms
        for g in self.groups:
            if g.root in widths:
                total *= self.ratio(g, widths[g.root])
        return total

    def ratio(self, g: GroupEntry, width: int) -> float:
        """Group ``g``'s factor of the prediction at ``width`` alive neurons (rounded as surgery will)."""
        if self.baseline_ms <= 0:
            return 1.0
        return max(1.0 + g.delta(min(g.size, self.rounded(int(width)))) / self.baseline_ms, RATIO_FLOOR)

    def min_predicted_ms(self) -> float:
        """The prediction with every group at its narrowest measured width: the least the table can vouch for."""
        return self.predict({g.root: g.widths[-1] for g in self.groups})

    def floor_ms(self) -> float:
        slopes = [g.mean_slope() for g in self.groups]
        top = max(slopes, default=0.0)
        return FLOOR * top if top > 0 else 1e-9

    def marginal(self, root: str, alive: int) -> float:
        """Milliseconds one neuron fewer buys in group ``root`` at ``alive`` neurons (floored, > 0)."""
        g = self.entry(root)
        return max(g.slope(min(g.size, self.rounded(alive))), self.floor_ms())

    def check_groups(self, groups, source: str = "the latency table", input_shape: Sequence[int] | None = None,
                     round_channels: int | None | bool = False) -> None:
        """Raise ConfigError unless the table covers exactly these neuron groups at these sizes, was profiled at
        ``input_shape`` (when given) and with the run's ``round_channels`` (when given; ``False`` skips the check).
        A different checkpoint of the same architecture is fine: a table is made on the baseline."""
        have = {g.root: g.size for g in self.groups}
        want = {g.root: g.size for g in groups}
        if have != want:
            diff = sorted(set(have.items()) ^ set(want.items()))[:4]
            raise ConfigError(f"{source} was profiled for other layers or widths than this model (e.g. "
                              f"{', '.join(f'{r}:{s}' for r, s in diff)}); profile this model with "
                              "`edgeprune profile MODEL`")
        shape = (self.model or {}).get("input_shape")
        if input_shape is not None and shape is not None and [int(v) for v in shape] != [int(v) for v in input_shape]:
            fmt = ",".join
            raise ConfigError(f"{source} was profiled for input shape {fmt(map(str, shape))}, this run's model takes "
                              f"{fmt(str(int(v)) for v in input_shape)}; profile this model: `edgeprune profile MODEL "
                              f"--input-shape {fmt(str(int(v)) for v in input_shape)} --out TABLE.json`")
        if round_channels is not False and (self.round_channels or None) != (round_channels or None):
            if self.round_channels:
                fix = f"add --round-channels {self.round_channels} to compress"
            else:
                fix = "drop --round-channels from compress"
            raise ConfigError(f"{source} was profiled with --round-channels {self.round_channels or 'none'}, this run "
                              f"uses {round_channels or 'none'}: its predictions would not match the shipped widths; "
                              f"{fix}, or profile again with the run's --round-channels")


def group_widths(groups, masks) -> dict[str, int]:
    """Root → alive neurons of each group under ``masks``."""
    from .threshold.neurons import group_alive

    return {g.root: int(group_alive(g, masks).sum()) for g in groups}


def neuron_latency_costs(table: LatencyTable, groups, masks) -> list[torch.Tensor]:
    """Per group, per neuron: its marginal latency (ms) at the group's current alive width — the cost of
    ``--neuron-cost latency:TABLE``."""
    widths = group_widths(groups, masks)
    return [torch.full((g.size,), table.marginal(g.root, widths[g.root]), dtype=torch.float64) for g in groups]


def widths_of_module(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Root → output width of every neuron group of a (slim or dense) model: what it ships with."""
    from .threshold.neurons import neuron_groups

    return {g.root: g.size for g in neuron_groups(model, tuple(input_shape))}


# --- profiling ------------------------------------------------------------------------------------------------------


def profile_widths(size: int, fractions: Sequence[float], round_channels: int | None) -> list[int]:
    """The widths measured for a group of ``size``: size, then each fraction of it rounded up as surgery would."""
    r = round_channels or 1
    out = [size]
    for f in sorted(fractions, reverse=True):
        w = max(r, int(math.ceil(f * size / r) * r))
        if w < out[-1]:
            out.append(w)
    return out


def narrowed(model: nn.Module, group, width: int, input_shape, round_channels: int | None) -> nn.Module:
    """A slim copy of ``model`` with ``group`` cut to ``width`` neurons (its last ones removed) by surgery."""
    import copy

    from .masks import apply_masks_, full_masks
    from .surgery import surgery
    from .threshold.neurons import neuron_masks

    m = copy.deepcopy(model).eval()
    masks = neuron_masks([group], full_masks(m), [(0, r) for r in range(width, group.size)])
    apply_masks_(m, masks)
    return surgery(m, tuple(input_shape), round_channels=round_channels).model


class _quiet:
    """Raise the given loggers to WARNING for the duration (the per-variant surgery and export notices)."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n) for n in names]
        self.levels: list[int] = []

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def _checkpoint_digest(path: str | Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def profile_model(model: nn.Module, input_shape: Sequence[int], *, device: str = "cpu",
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, round_channels: int | None = None,
                  runs: int = 200, warmup: int = 20, warmup_seconds: float = 0.2, threads: int | None = None,
                  seed: int = 0, serial: str | None = None, runner: str = "ort-c", cores: str | None = None,
                  cooldown_seconds: float = 60.0, auth_timeout: float = 30.0, partial_path: str | Path | None = None,
                  checkpoint: str | Path | None = None, progress: bool = True) -> LatencyTable:
    """Measure the latency table of ``model`` on ``device`` ("cpu": ONNX Runtime here; "adb": a phone).

    All variants (one per group and narrower width) and the dense model are timed in one alternating run
    (``runs`` timed inferences each, the bench protocol), so drift hits them alike."""
    from .bench import ModelSource, bench_models
    from .threshold.neurons import neuron_groups

    if device not in ("cpu", "adb"):
        raise ConfigError(f"--device must be cpu or adb for profiling, got {device!r}")
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise ConfigError(f"--fractions must be numbers in (0, 1), e.g. 0.75,0.5,0.25; got {list(fractions)}")
    if runs < 1 or warmup < 0:
        raise ConfigError("--runs must be at least 1 and --warmup at least 0")
    t0 = time.perf_counter()
    from .surgery.parts import TraceError

    shape = tuple(int(s) for s in input_shape)
    model = model.cpu().eval()
    try:
        groups = neuron_groups(model, shape)
    except TraceError:
        raise ConfigError("latency tables do not yet support models that torch-pruning can only cut by parts (e.g. "
                          "ShuffleNetV2); compress this model without --neuron-cost latency: / --latency-table "
                          "(--neuron-cost macs ranks by compute instead)") from None
    if not groups:
        raise ConfigError("the model has no prunable neuron group (nothing between input and output layer to "
                          "narrow); there is nothing to profile")
    plan: list[tuple[int, int]] = []  # (group index, width)
    widths: list[list[int]] = []
    for gi, g in enumerate(groups):
        ws = profile_widths(g.size, fractions, round_channels)
        widths.append(ws)
        plan += [(gi, w) for w in ws[1:]]
    log.info("profiling %d groups, %d narrowed variants on %s", len(groups), len(plan), device)
    from ._progress import make_progress

    variants = []
    # One log line per variant and stage would bury the table: surgery and export speak only of problems here.
    with _quiet("edgeprune.surgery", "edgeprune.export"), make_progress() as bar:
        task = bar.add_task("narrowed variants (surgery)", total=len(plan), info="") if progress else None
        for gi, w in plan:
            variants.append(narrowed(model, groups[gi], w, shape, round_channels))
            if task is not None:
                bar.update(task, advance=1, info=f"{groups[gi].root} → {w}")
    labels = [f"v{i:03d}" for i in range(len(plan))]
    if device == "cpu":
        sources = [ModelSource(module=model, label="dense", role="baseline", input_shape=shape)]
        sources += [ModelSource(module=v, label=lab, input_shape=shape) for v, lab in zip(variants, labels)]
        with _quiet("edgeprune.export"):
            result = bench_models(sources, runtime="onnxruntime", runs=runs, warmup=warmup, threads=threads or 1,
                                  input_shape=shape, seed=seed, progress=progress, warmup_seconds=warmup_seconds)
        medians = {m.label: m.stats["median_ms"] for m in result.models}
        dev = result.device
        proto_runner = "onnxruntime (python)"
        threads_used = threads or 1
    else:
        result, medians = _profile_adb(model, variants, labels, shape, runs=runs, warmup=warmup, threads=threads,
                                       seed=seed, serial=serial, runner=runner, cores=cores,
                                       cooldown_seconds=cooldown_seconds, auth_timeout=auth_timeout,
                                       partial_path=partial_path, progress=progress)
        dev = result.device
        proto_runner = runner
        threads_used = result.threads
    base = float(medians["dense"])
    entries = []
    k = 0
    for gi, g in enumerate(groups):
        lat = [base]
        for _ in widths[gi][1:]:
            lat.append(float(medians[labels[k]]))
            k += 1
        entries.append(GroupEntry(
            root=g.root, size=g.size, members=[n for n, kind, _, _ in g.members],
            consumers=sorted({n for n, _, _ in g.consumers}), widths=widths[gi], latency_ms=lat,
            delta_ms=[v - base for v in lat]))
    arch = getattr(model, "edgeprune_arch", None)
    return LatencyTable(
        baseline_ms=base, groups=entries, device=dev,
        protocol={"device": device, "runner": proto_runner, "runs": runs, "warmup": warmup,
                  "warmup_seconds": warmup_seconds, "threads": threads_used, "batch_size": 1,
                  "block_size": result.block_size or None, "seed": seed, "statistic": "median",
                  "fractions": list(fractions), "order": "all variants and the dense model in alternating blocks"},
        model={"arch": arch, "input_shape": list(shape), "checkpoint": str(checkpoint) if checkpoint else None,
               "sha256": _checkpoint_digest(checkpoint),
               "params": int(sum(p.numel() for p in model.parameters()))},
        round_channels=round_channels, seconds=round(time.perf_counter() - t0, 1),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _profile_adb(model, variants, labels, shape, *, runs, warmup, threads, seed, serial, runner, cores,
                 cooldown_seconds, auth_timeout, partial_path, progress):
    import tempfile

    from .bench import result_from_android
    from .bench.runtimes import export_onnx_for_bench
    from .errors import BenchError

    try:
        import android_bench
        from android_bench.errors import AndroidBenchError
    except ImportError as exc:  # pragma: no cover - shipped with edgeprune
        raise BenchError(f"android_bench is not importable ({exc}); reinstall edgeprune") from None
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp, _quiet("edgeprune.export"):
        dense = export_onnx_for_bench(model, shape, Path(tmp) / "dense.onnx")
        files = [export_onnx_for_bench(v, shape, Path(tmp) / f"{lab}.onnx") for v, lab in zip(variants, labels)]
        try:
            record = android_bench.run_benchmark(
                files, serial, runner=runner, runs=runs, warmup=warmup, threads=threads, cores=cores,
                cooldown_seconds=cooldown_seconds, keep=False,
                partial_path=Path(partial_path) if partial_path else Path(tmp) / "raw.json",
                progress=progress, baseline=dense, input_shape=(1, *shape), auth_timeout_s=auth_timeout)
        except AndroidBenchError as exc:
            raise BenchError(str(exc)) from None
    result = result_from_android(record, seed=seed)
    medians = {}
    for m in result.models:
        stem = Path(m.path or m.label).stem if (m.path or m.label) else m.label
        medians["dense" if m.role == "baseline" else stem] = m.stats["median_ms"]
    missing = [lab for lab in labels if lab not in medians]
    if missing or "dense" not in medians:
        raise BenchError(f"the phone run returned no timing for {len(missing)} of the variants; rerun the profile")
    return result, medians


# --- predicted vs measured ------------------------------------------------------------------------------------------


def check_table_for_run(path: str | Path, model_path: str | Path, input_shape: Sequence[int] | None = None,
                        round_channels: int | None = None, prune: str = "neurons") -> LatencyTable:
    """Load the latency table of a compress run and check it against the run's model (its neuron groups, input
    shape) and ``--round-channels`` — before the run folder is made, so a refused run leaves nothing behind."""
    from .checkpoint import load_checkpoint
    from .threshold.neurons import traceable_neuron_groups

    table = LatencyTable.load(path)
    try:
        loaded = load_checkpoint(model_path)
    except Exception:  # noqa: BLE001 - the run reports a model it cannot load; the table itself was checked
        return table
    shape = tuple(input_shape or loaded.meta.get("input_shape") or table.model.get("input_shape") or ())
    if not shape:
        return table  # the run itself finds the shape from the data and checks the groups
    groups = traceable_neuron_groups(loaded.model.eval(), tuple(int(v) for v in shape)) \
        if prune in ("neurons", "both") else []
    # Without neuron groups (--prune weights) the table only predicts: its layers are not checked, the rest is.
    table.check_groups(groups or table.groups, str(path), input_shape=shape, round_channels=round_channels)
    return table


def target_ms(table: LatencyTable, target_latency: float | None, target_speedup: float | None) -> float | None:
    """The latency target in ms: ``target_latency``, or the table's dense latency ÷ ``target_speedup``."""
    if target_latency is not None:
        return float(target_latency)
    if target_speedup is not None:
        return table.baseline_ms / float(target_speedup)
    return None


def latency_check(table: LatencyTable, slim: nn.Module, input_shape: Sequence[int], run_dir: str | Path,
                  config, runs: int = 500) -> dict:
    """The shipped model's predicted latency from ``table`` and, for a table profiled on this machine, its latency
    measured against the run's baseline in one alternating bench run (ONNX Runtime, the table's threads), with the
    prediction error ``predicted ÷ measured − 1``. ``error_scaled`` compares the predicted speedup with the
    measured one instead (the prediction scaled to today's dense measurement: robust to a machine whose load
    changed since the profile)."""
    widths = widths_of_module(slim, input_shape)
    predicted = table.predict(widths)
    target = target_ms(table, config.target_latency, config.target_speedup)
    info: dict = {"table": str(config.latency_table), "device": table.protocol.get("device"),
                  "table_dense_ms": table.baseline_ms, "predicted_ms": predicted,
                  "predicted_speedup": table.baseline_ms / predicted, "widths": widths, "target_ms": target,
                  "predicted_meets_target": None if target is None else predicted <= target + 1e-12}
    if table.protocol.get("device") != "cpu":
        return info
    from .bench import ModelSource, bench_models
    from .checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    shape = tuple(int(s) for s in input_shape)
    if (run_dir / "baseline.onnx").is_file():
        dense = ModelSource(run_dir / "baseline.onnx", label="baseline", role="baseline", input_shape=shape)
    else:
        dense = ModelSource(module=load_checkpoint(run_dir / "baseline.pt").model.eval(), label="baseline",
                            role="baseline", input_shape=shape)
    if (run_dir / "model.onnx").is_file():
        model = ModelSource(run_dir / "model.onnx", label="slim", input_shape=shape)
    else:
        model = ModelSource(module=slim.eval(), label="slim", input_shape=shape)
    res = bench_models([dense, model], runtime="onnxruntime", runs=runs, warmup=int(table.protocol.get("warmup", 20)),
                       threads=int(table.protocol.get("threads") or 1), input_shape=shape, progress=False,
                       warmup_seconds=float(table.protocol.get("warmup_seconds", 0.2)))
    d, s = res.models[0], res.models[1]
    sp = s.speedup or {}
    info["measured"] = {
        "dense_ms": d.stats["median_ms"], "slim_ms": s.stats["median_ms"], "speedup": sp.get("median"),
        "speedup_ci95": (sp.get("ci95") or {}).get("median"), "runs": runs,
        "error": predicted / s.stats["median_ms"] - 1.0,
        "error_scaled": d.stats["median_ms"] / info["predicted_speedup"] / s.stats["median_ms"] - 1.0,
        "load_average": res.device.get("load_average"),
    }
    return info


def latency_penalty_weights(table: LatencyTable, groups, masks, model: nn.Module) -> dict[str, torch.Tensor]:
    """``--latency-penalty``: layer → per-neuron factor on SeReNe's λ, ``c_n / mean(c)`` where ``c_n`` is the
    marginal latency of the neuron's group at its current width and the mean runs over the alive neurons of all
    groups (so the average λ stays λ). Every Conv / Linear member of a group gets its group's factor on the neuron's
    output channel; layers outside any group (the output layer) keep factor 1."""
    from .threshold.neurons import group_alive

    costs, alive_counts = [], []
    for g in groups:
        alive = group_alive(g, masks)
        costs.append(table.marginal(g.root, int(alive.sum())))
        alive_counts.append(int(alive.sum()))
    total = sum(alive_counts)
    mean = sum(c * n for c, n in zip(costs, alive_counts)) / total if total else 1.0
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for g, c in zip(groups, costs):
        for name, kind, _, midx in g.members:
            if kind != "layer":
                continue
            mod = modules[name]
            n = getattr(mod, "out_channels", getattr(mod, "out_features", None))
            w = out.setdefault(name, torch.ones(int(n), dtype=torch.float64))
            w[midx] = c / mean
    return out
