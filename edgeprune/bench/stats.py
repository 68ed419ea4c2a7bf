"""Latency statistics as pure functions of raw per-inference samples (milliseconds).

Nothing here knows where the samples came from: the local protocol, or ``android_bench`` on a phone, feed the same
functions. SeReNe Table X reports mean ± std over 1,000 inferences; we add the robust figures (median, tail
percentiles) and a confidence interval for the dense ÷ slim speedup, since a ratio of two noisy figures needs one to
be read honestly.

Runs inside one block share that block's machine state (clock, temperature, other load, on a phone the runner
process), so they are not independent: the unit of the speedup interval is the *block pair* (a dense block and the
slim block run right after it), resampled whole.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np

from ..errors import BenchError

STAT_KEYS = ("mean_ms", "std_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")
MIN_BLOCK_PAIRS = 3
"""Fewer complete block pairs than this and the interval falls back to resampling single runs (``"run"`` unit)."""

Samples = Sequence[float] | np.ndarray
BlockSamples = Sequence[Sequence[float]]


def _as_array(samples_ms: Samples, what: str = "samples") -> np.ndarray:
    a = np.asarray(samples_ms, dtype=np.float64).ravel()
    if a.size and not np.all(np.isfinite(a)):
        raise BenchError(f"{what} contain NaN or infinite latencies; the measurement is broken, rerun it")
    if a.size and np.any(a < 0):
        raise BenchError(f"{what} contain negative latencies; the clock or the parser is broken, rerun it")
    return a


def summarize_samples(samples_ms: Samples) -> dict:
    """Mean ± std (sample std, ddof=1, as in Table X's "± "), median, p90, p99 (linear interpolation), min, max.

    An empty sample list (a benchmark interrupted before its first timed run) gives ``n = 0`` and ``None`` figures.
    """
    a = _as_array(samples_ms)
    n = int(a.size)
    if n == 0:
        return {"n": 0, **{k: None for k in STAT_KEYS}}
    return {
        "n": n,
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if n > 1 else 0.0,
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
    }


def is_blocked(samples: Samples | BlockSamples) -> bool:
    """True when ``samples`` is a list of blocks (each a list of latencies), False for a flat list of latencies."""
    return len(samples) > 0 and all(np.ndim(b) == 1 for b in samples)


def split_blocks(samples_ms: Samples, counts: Sequence[int]) -> list[list[float]]:
    """Cut a flat, execution-ordered sample list into blocks of ``counts`` runs."""
    if sum(counts) != len(samples_ms):
        raise BenchError(f"block counts add up to {sum(counts)} runs but there are {len(samples_ms)} samples")
    edges = np.cumsum([0, *counts])
    return [list(samples_ms[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def student_t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom: the Cornish-Fisher expansion in 1/df of
    Abramowitz & Stegun 26.7.5 (within 1e-4 of the exact value for df >= 9, 0.005 for df >= 3, 0.8 % at df = 2)."""
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def expanded_tail(confidence: float, n: int) -> float:
    """Lower tail probability of the expanded percentile interval (Hesterberg 2015, "What teachers should know about
    the bootstrap", The American Statistician 69(4)) for ``n`` resampled units: Φ(−√(n/(n−1)) · t_{n−1, 1−α/2}).
    The plain percentile interval is too narrow for small n (it uses z instead of t, and the bootstrap's 1/n
    variance); with 20 block pairs a nominal 95 % interval uses the 1.6 and 98.4 percentiles."""
    alpha = 1.0 - confidence
    return NormalDist().cdf(-np.sqrt(n / (n - 1)) * student_t_quantile(1.0 - alpha / 2.0, n - 1))


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise BenchError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise BenchError(f"confidence must be between 0 and 1, got {confidence}")


def _blocks_of(samples: Samples | BlockSamples, what: str) -> tuple[list[np.ndarray], bool]:
    if is_blocked(samples):
        return [_as_array(b, what) for b in samples], True
    return [_as_array(samples, what)], False


def _percentiles(r: np.ndarray, tail: float) -> list[float]:
    r = r[np.isfinite(r)]
    return [float(v) for v in np.percentile(r, (tail * 100.0, 100.0 - tail * 100.0))] if r.size else \
        [float("nan"), float("nan")]


def _pooled_medians(blocks: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Median of all runs in the blocks each row of ``idx`` picks (rows: resamples)."""
    sizes = {b.size for b in blocks}
    if len(sizes) == 1:  # equal blocks: one (resamples, runs) array
        mat = np.stack(blocks)
        chunk = max(1, int(4_000_000 // max(1, idx.shape[1] * mat.shape[1])))
        out = np.empty(idx.shape[0])
        for start in range(0, idx.shape[0], chunk):
            rows = idx[start:start + chunk]
            out[start:start + chunk] = np.median(mat[rows].reshape(rows.shape[0], -1), axis=1)
        return out
    return np.array([np.median(np.concatenate([blocks[i] for i in row])) for row in idx])


def block_bootstrap_ratios(dense_blocks: list[np.ndarray], slim_blocks: list[np.ndarray], rng: np.random.Generator,
                           resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired block bootstrap of dense ÷ slim: draw block-pair indices with replacement (the same indices for both
    models, so a pair stays together) and return, per resample, the ratio of the pooled medians and of the pooled
    means of the drawn blocks."""
    n = len(dense_blocks)
    idx = rng.integers(0, n, size=(resamples, n))
    d_sum = np.array([b.sum() for b in dense_blocks])
    s_sum = np.array([b.sum() for b in slim_blocks])
    d_n = np.array([b.size for b in dense_blocks])
    s_n = np.array([b.size for b in slim_blocks])
    with np.errstate(divide="ignore", invalid="ignore"):
        med = _pooled_medians(dense_blocks, idx) / _pooled_medians(slim_blocks, idx)
        mean = (d_sum[idx].sum(1) / d_n[idx].sum(1)) / (s_sum[idx].sum(1) / s_n[idx].sum(1))
    return med, mean


def run_bootstrap_ratios(dense: np.ndarray, slim: np.ndarray, rng: np.random.Generator,
                         resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense and slim runs resampled independently, each run its own unit: right only if runs are independent,
    which drift between blocks breaks. The fallback when no block structure is known."""
    med = np.empty(resamples)
    mean = np.empty(resamples)
    chunk = max(1, int(4_000_000 // max(dense.size, slim.size)))  # 2,000 × 100k samples in bounded memory
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        bd = dense[rng.integers(0, dense.size, size=(k, dense.size))]
        bs = slim[rng.integers(0, slim.size, size=(k, slim.size))]
        with np.errstate(divide="ignore", invalid="ignore"):
            med[start:start + k] = np.median(bd, axis=1) / np.median(bs, axis=1)
            mean[start:start + k] = bd.mean(axis=1) / bs.mean(axis=1)
    return med, mean


def speedup(
    dense: Samples | BlockSamples,
    slim: Samples | BlockSamples,
    seed: int = 0,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> dict:
    """Speedup of the slim model over the dense one, dense ÷ slim, by median and by mean, with bootstrap intervals.

    ``dense`` and ``slim`` are each a list of blocks in execution order (``dense[k]`` the latencies of the k-th
    dense block, paired with ``slim[k]``), or a flat list of latencies when the block structure is unknown.

    Point estimates use every sample: median(dense) ÷ median(slim) and mean ÷ mean. The interval, with blocks of
    both models and at least :data:`MIN_BLOCK_PAIRS` complete pairs, is a *paired block bootstrap*: the n complete
    pairs are drawn n times with replacement, the statistic is the ratio of the pooled medians (means) of the drawn
    dense and slim blocks, and the interval is the expanded percentile interval of ``resamples`` such ratios
    (:func:`expanded_tail`); ``interval_unit`` is ``"block"``. Otherwise single runs are resampled independently
    (plain percentile interval) and ``interval_unit`` is ``"run"``: that interval ignores drift and is too narrow
    whenever runs are not independent.
    """
    _check(resamples, confidence)
    d_blocks, d_known = _blocks_of(dense, "dense samples")
    s_blocks, s_known = _blocks_of(slim, "slim samples")
    d = np.concatenate(d_blocks)
    s = np.concatenate(s_blocks)
    if d.size == 0 or s.size == 0:
        raise BenchError("a speedup needs samples of both models; the benchmark recorded none for one of them")
    if np.median(s) <= 0 or s.mean() <= 0:
        raise BenchError("the slim model's latencies are zero; the timer resolution is too coarse for this model")
    pairs = [(a, b) for a, b in zip(d_blocks, s_blocks) if a.size and b.size] if d_known and s_known else []
    rng = np.random.default_rng(seed)
    out: dict = {
        "median": float(np.median(d) / np.median(s)),
        "mean": float(d.mean() / s.mean()),
        # Fastest run vs fastest run: the least disturbed estimate on a busy machine (no interval: one sample each).
        "min": float(d.min() / s.min()) if s.min() > 0 else None,
    }
    if len(pairs) >= MIN_BLOCK_PAIRS:
        med, mean = block_bootstrap_ratios([a for a, _ in pairs], [b for _, b in pairs], rng, resamples)
        tail = expanded_tail(confidence, len(pairs))
        unit = "block"
        method = ("paired block bootstrap: block pairs resampled with replacement, ratio of the pooled medians "
                  "(means) of the drawn blocks, expanded percentile interval")
    else:
        med, mean = run_bootstrap_ratios(d, s, rng, resamples)
        tail = (1.0 - confidence) / 2.0
        unit = "run"
        method = "percentile bootstrap, dense and slim runs resampled independently"
    out.update({
        "ci95": {"median": _percentiles(med, tail), "mean": _percentiles(mean, tail)},
        "confidence": confidence,
        "interval_unit": unit,
        "block_pairs": len(pairs),
        "unpaired_blocks": (len(d_blocks) + len(s_blocks) - 2 * len(pairs)) if d_known and s_known else None,
        "tail_percentiles": [tail * 100.0, 100.0 - tail * 100.0],
        "resamples": int(resamples),
        "seed": int(seed),
        "method": method,
    })
    if unit == "run":
        why = ("no block structure was recorded" if not (d_known and s_known) else
               f"only {len(pairs)} complete block pair{'s' if len(pairs) != 1 else ''} (fewer than "
               f"{MIN_BLOCK_PAIRS})")
        out["note"] = f"{why}: single runs were resampled as if independent, so the interval is too narrow " \
                      "under drift between blocks"
    return out
