"""`CompressConfig`: the hyper-parameters of one SeReNe / LOBSTER / ℓ2 run, and the papers' named presets."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..errors import ConfigError
from .update import UPDATE_METHODS

CONFIG_TYPE = "edgeprune.CompressConfig"
CONFIG_VERSION = 1

PRUNE_MODES = ("neurons", "weights", "both")
NEURON_SCORES = ("taylor", "norm", "gamma")

# Fields added after the first runs, with the value those runs used: resuming a run recorded without the field
# continues it the way it started (a missing field in a user's --config file gets today's default instead).
LEGACY_DEFAULTS = {"prune": "weights", "final_step": False, "conv_sensitivity": "sum", "neuron_score": "norm",
                   "neuron_cost": "none", "latency_table": None, "target_latency": None, "target_speedup": None,
                   "latency_penalty": False}

# Fields that may change when a run is resumed (budgets and where it runs); everything else must match.
RESUMABLE_FIELDS = ("max_epochs", "max_minutes", "device")


@dataclasses.dataclass
class CompressConfig:
    method: str = "serene-lb"
    lam: float = 1e-5
    """λ of SeReNe eq. 15 / LOBSTER eq. 4 (0 for ℓ2)."""
    twt: float = 1.0
    """Thresholding worsening tolerance: the loss may grow to (1 + TWT)·L̂."""
    pwe: int = 20
    """Plateau waiting epochs."""
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float | None = None
    """ℓ2 weight decay; default 1e-4 for method l2, 0 otherwise."""
    batch_size: int = 100
    target_drop: float = 0.005
    """Stop when validation accuracy falls below the baseline's minus this (fraction, 0.005 = 0.5 points)."""
    max_epochs: int = 1000
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    dataset: str | None = None
    """Dataset name; default: the one recorded in the model checkpoint."""
    data_dir: str | None = None
    val_fraction: float = 0.1
    class_chunk: int = 16
    """Classes per vectorized VJP in exact sensitivity (peak memory ∝ chunk, not C)."""
    exact_vjp: str = "vectorized"
    """How exact sensitivity runs its C products: "vectorized" (one batched VJP per chunk) or "loop" (one by one;
    faster on CPU for conv nets, see docs/serene.md)."""
    conv_sensitivity: str = "mean"
    """How a conv filter's sensitivity aggregates its spatial positions: "mean" (the paper's reference code) or "sum"
    (edgeprune's earlier rule; grows with the feature-map size), see docs/serene.md."""
    preset: str | None = None
    prune: str = "neurons"
    """What a threshold step prunes: "neurons" (whole coupled channels, BN γ/β included: a smaller, faster slim
    model), "weights" (SeReNe eq. 22: one global magnitude T over all parameters) or "both" (neurons, then weights
    within the same loss bound, for the smallest .7z)."""
    neuron_score: str = "taylor"
    """How neurons are ranked for neuron thresholding: "taylor" (the squared first-order change of the validation
    loss when the whole neuron goes to zero), "norm" (per-layer-normalized parameter norm) or "gamma" (BatchNorm |γ|
    per layer, the network-slimming criterion; "norm" where a neuron has no BN). See docs/serene.md."""
    neuron_cost: str = "none"
    """What a neuron's score is divided by before ranking: "none", "macs" (the multiply-accumulates the neuron
    costs per inference: at equal loss, the neurons that save most computation go first) or "latency:TABLE" (its
    marginal latency on the device of the table `edgeprune profile` wrote: at equal loss, the neurons that buy the
    most time go first; see docs/latency.md)."""
    latency_table: str | None = None
    """A latency table (`edgeprune profile`) to predict the slim model's latency with and to stop at a latency
    target; set by --neuron-cost latency:TABLE, or alone to keep another ranking."""
    target_latency: float | None = None
    """Stop pruning once the predicted latency (ms, on the table's device) is at or below this."""
    target_speedup: float | None = None
    """Stop pruning once the table's dense latency ÷ the predicted latency reaches this."""
    latency_penalty: bool = False
    """Weight SeReNe's penalty per neuron by its marginal latency from the latency table (λ_n = λ·c_n / mean c over
    the prunable neurons; output-layer neurons keep λ): expensive neurons are pushed to zero harder."""
    final_step: bool = True
    """When the budget ends, or a threshold step missed the accuracy target, run one last bisection on the best
    network constrained by the accuracy target itself, so the run returns the most pruned network meeting it."""

    def __post_init__(self) -> None:
        if self.method not in UPDATE_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(UPDATE_METHODS)}, got {self.method!r}")
        if self.weight_decay is None:
            self.weight_decay = 1e-4 if self.method == "l2" else 0.0
        if self.method == "l2" and self.lam != 0:
            self.lam = 0.0  # the papers' ℓ2+pruning baseline: weight decay in place of the sensitivity term
        checks = [
            (self.lam >= 0 and math.isfinite(self.lam), f"--lambda must be >= 0, got {self.lam}"),
            (self.twt >= 0, f"--twt must be >= 0, got {self.twt}"),
            (self.pwe >= 1, f"--pwe must be at least 1, got {self.pwe}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (0 <= self.target_drop < 1, f"--target-drop must be in [0, 1) (a fraction), got {self.target_drop}"),
            (self.max_epochs >= 1, f"--max-epochs must be at least 1, got {self.max_epochs}"),
            (self.max_minutes is None or self.max_minutes > 0, f"--max-minutes must be positive, got {self.max_minutes}"),
            (0 < self.val_fraction < 1, f"validation fraction must be in (0, 1), got {self.val_fraction}"),
            (self.class_chunk >= 1, f"class chunk must be at least 1, got {self.class_chunk}"),
            (self.exact_vjp in ("vectorized", "loop"), f"--exact-vjp must be vectorized or loop, got {self.exact_vjp!r}"),
            (self.prune in PRUNE_MODES, f"--prune must be one of {', '.join(PRUNE_MODES)}, got {self.prune!r}"),
            (self.neuron_cost in ("none", "macs") or (self.neuron_cost.startswith("latency:")
                                                       and len(self.neuron_cost) > len("latency:")),
             f"--neuron-cost must be none, macs or latency:TABLE (a table from `edgeprune profile`), got "
             f"{self.neuron_cost!r}"),
            (self.target_latency is None or (self.target_latency > 0 and math.isfinite(self.target_latency)),
             f"--target-latency must be a positive number of milliseconds, got {self.target_latency}"),
            (self.target_speedup is None or (self.target_speedup >= 1 and math.isfinite(self.target_speedup)),
             f"--target-speedup must be at least 1 (dense ÷ slim), got {self.target_speedup}"),
            (self.target_latency is None or self.target_speedup is None,
             "give --target-latency or --target-speedup, not both"),
            (self.neuron_score in NEURON_SCORES,
             f"--neuron-score must be one of {', '.join(NEURON_SCORES)}, got {self.neuron_score!r}"),
            (self.conv_sensitivity in ("mean", "sum"),
             f"--conv-sensitivity must be mean or sum, got {self.conv_sensitivity!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        cost_table = self.neuron_cost[len("latency:"):] if self.neuron_cost.startswith("latency:") else None
        if cost_table is not None:
            if self.latency_table is not None and self.latency_table != cost_table:
                raise ConfigError(f"--neuron-cost {self.neuron_cost} and --latency-table {self.latency_table} name "
                                  "different tables; give one")
            self.latency_table = cost_table
        if (self.target_latency is not None or self.target_speedup is not None) and self.latency_table is None:
            raise ConfigError("a latency target needs a latency table: --neuron-cost latency:TABLE or --latency-table "
                              "TABLE (make one with `edgeprune profile MODEL --out TABLE`)")
        if self.latency_penalty and (self.latency_table is None or not self.method.startswith("serene-")):
            raise ConfigError("--latency-penalty weights SeReNe's λ by a latency table: give --neuron-cost "
                              "latency:TABLE or --latency-table TABLE with a serene-* method")
        if self.latency_table is not None and self.prune == "weights":
            raise ConfigError("a latency table steers neuron pruning; use it with --prune neurons or both")

    def to_dict(self) -> dict:
        return {"type": CONFIG_TYPE, "version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, recorded: bool = False) -> "CompressConfig":
        """Build from a dict; ``recorded``: the dict was written by an earlier run, so fields it lacks take the value
        that run used (:data:`LEGACY_DEFAULTS`)."""
        data = dict(data)
        if recorded:
            data = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in data}, **data}
        kind = data.pop("type", CONFIG_TYPE)
        version = data.pop("version", CONFIG_VERSION)
        if kind != CONFIG_TYPE:
            raise ConfigError(f"config type is {kind!r}, expected {CONFIG_TYPE}")
        if version > CONFIG_VERSION:
            raise ConfigError(f"config version {version} is newer than this edgeprune ({CONFIG_VERSION}); upgrade")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "CompressConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data)

    def comparable(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_FIELDS}


# The papers' hyper-parameters per experiment (SeReNe Sec. V; batch size and momentum are not given there unless
# listed: plain SGD, batches of 100).
PRESETS: dict[str, dict] = {
    "lenet300-mnist": dict(method="serene-lb", lam=1e-5, twt=0.3, pwe=20, lr=0.1, dataset="mnist"),
    "lenet5-mnist": dict(method="serene-lb", lam=1e-4, twt=1.45, pwe=20, lr=0.1, dataset="mnist"),
    "lenet5-fmnist": dict(method="serene-lb", lam=1e-5, twt=1.0, pwe=20, lr=0.1, dataset="fashion-mnist"),
    "vgg16-cifar10": dict(method="serene-lb", lam=1e-6, twt=1.5, pwe=20, lr=0.01, dataset="cifar10"),
    "resnet32-cifar10": dict(method="serene-lb", lam=1e-5, twt=0.0, pwe=10, lr=0.001, momentum=0.9, dataset="cifar10"),
    "alexnet-cifar100": dict(method="serene-lb", lam=1e-5, twt=1.5, pwe=20, lr=0.1, dataset="cifar100"),
}


def make_config(preset: str | None = None, config_file: str | Path | None = None, **overrides) -> CompressConfig:
    """Defaults ← preset ← config file ← explicit options (``None`` means "not given")."""
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset], preset=preset)
    if config_file is not None:
        loaded = CompressConfig.load(config_file)
        values.update({k: v for k, v in dataclasses.asdict(loaded).items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return CompressConfig(**values)
