"""Latency statistics as pure functions of raw per-inference samples (milliseconds).

Nothing here knows where the samples came from: the local protocol, or ``android_bench`` on a phone, feed the same
functions. SeReNe Table X reports mean ± std over 1,000 inferences; we add the robust figures (median, tail
percentiles) and a bootstrap confidence interval for the dense ÷ slim speedup, since a ratio of two noisy means
needs one to be read honestly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import BenchError

STAT_KEYS = ("mean_ms", "std_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")


def _as_array(samples_ms: Sequence[float] | np.ndarray, what: str = "samples") -> np.ndarray:
    a = np.asarray(samples_ms, dtype=np.float64).ravel()
    if a.size and not np.all(np.isfinite(a)):
        raise BenchError(f"{what} contain NaN or infinite latencies; the measurement is broken, rerun it")
    if a.size and np.any(a < 0):
        raise BenchError(f"{what} contain negative latencies; the clock or the parser is broken, rerun it")
    return a


def summarize_samples(samples_ms: Sequence[float] | np.ndarray) -> dict:
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


def speedup(
    dense_samples: Sequence[float] | np.ndarray,
    slim_samples: Sequence[float] | np.ndarray,
    seed: int = 0,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> dict:
    """Speedup of the slim model over the dense one, dense ÷ slim, by median and by mean, with percentile-bootstrap
    confidence intervals: both sample sets are resampled independently with replacement ``resamples`` times (seeded),
    the ratio is recomputed on each pair, and the interval is the central ``confidence`` mass of those ratios.
    """
    d = _as_array(dense_samples, "dense samples")
    s = _as_array(slim_samples, "slim samples")
    if d.size == 0 or s.size == 0:
        raise BenchError("a speedup needs samples of both models; the benchmark recorded none for one of them")
    if resamples < 1:
        raise BenchError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise BenchError(f"confidence must be between 0 and 1, got {confidence}")
    if np.median(s) <= 0 or s.mean() <= 0:
        raise BenchError("the slim model's latencies are zero; the timer resolution is too coarse for this model")
    rng = np.random.default_rng(seed)
    # Resample in chunks so 2,000 × 100k samples does not need gigabytes at once.
    med_ratios = np.empty(resamples)
    mean_ratios = np.empty(resamples)
    chunk = max(1, int(4_000_000 // max(d.size, s.size)))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        bd = d[rng.integers(0, d.size, size=(k, d.size))]
        bs = s[rng.integers(0, s.size, size=(k, s.size))]
        with np.errstate(divide="ignore", invalid="ignore"):
            med_ratios[start:start + k] = np.median(bd, axis=1) / np.median(bs, axis=1)
            mean_ratios[start:start + k] = bd.mean(axis=1) / bs.mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    q = (tail, 100.0 - tail)

    def interval(r: np.ndarray) -> list[float]:
        r = r[np.isfinite(r)]
        return [float(v) for v in np.percentile(r, q)] if r.size else [float("nan"), float("nan")]

    return {
        "median": float(np.median(d) / np.median(s)),
        "mean": float(d.mean() / s.mean()),
        # Fastest run vs fastest run: the least disturbed estimate on a busy machine (no interval: one sample each).
        "min": float(d.min() / s.min()) if s.min() > 0 else None,
        "ci95": {"median": interval(med_ratios), "mean": interval(mean_ratios)},
        "confidence": confidence,
        "resamples": int(resamples),
        "seed": int(seed),
        "method": "percentile bootstrap, dense and slim resampled independently",
    }
