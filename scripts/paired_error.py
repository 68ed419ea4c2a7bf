#!/usr/bin/env python
"""Paired test-error comparison of exported models: one reference model against others on the same test images.

Each ``.onnx`` model is run with ONNX Runtime (1 thread, one image at a time, CPU) over the test split of
``--dataset``; for every other model the report gives its test error, the reference's error minus its error (in
points) with a 95 % paired bootstrap interval over images, the discordant counts (images only the reference gets
right / only the model gets right) and the exact two-sided McNemar p-value. Paired on the same images, this tells
whether two errors a few tenths of a point apart differ at all: one 10,000-image test set alone has a standard error
of about 0.3 pt at 12 % error.

    .venv/bin/python scripts/paired_error.py --ref runs/compare-latency/serene-lb-latency/model.onnx \\
        runs/compare-latency-tp55/tp-groupnorm-sl/model.onnx runs/compare-latency-tp45/tp-groupnorm-sl/model.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeprune import _io  # noqa: E402
from edgeprune._progress import make_progress  # noqa: E402


def predict(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every image of ``x`` (N, C, H, W) by the ONNX model at ``path``, one image per run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for missing / invalid files
        raise SystemExit(f"{path}: cannot be loaded by ONNX Runtime ({exc.__class__.__name__}); give an .onnx "
                         "model exported by edgeprune") from None
    inp = sess.get_inputs()[0]
    want = tuple(inp.shape[1:])
    if all(isinstance(d, int) for d in want) and want != tuple(x.shape[1:]):
        raise SystemExit(f"{path}: takes inputs of shape {want}, the test images are {tuple(x.shape[1:])}; "
                         "give a model trained on this dataset")
    out = np.empty(len(x), dtype=np.int64)
    with make_progress() as progress:
        task = progress.add_task(Path(path).parent.name or str(path), total=len(x), info="")
        for i in range(len(x)):
            out[i] = int(np.argmax(sess.run(None, {inp.name: x[i:i + 1]})[0]))
            progress.advance(task)
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of b and c discordant pairs (binomial test of b against (b + c) / 2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def paired(ref_correct: np.ndarray, other_correct: np.ndarray, seed: int = 0, resamples: int = 2000) -> dict:
    """Reference error minus the other model's, on the same images (points of a fraction: +0.01 = the reference is
    1 pt worse), with a 95 % percentile interval of the images resampled with replacement, and McNemar's test."""
    ref_correct = np.asarray(ref_correct, dtype=bool)
    other_correct = np.asarray(other_correct, dtype=bool)
    if ref_correct.shape != other_correct.shape or ref_correct.ndim != 1 or ref_correct.size == 0:
        raise ValueError("both models need one prediction per test image, the same images")
    d = other_correct.astype(np.int8) - ref_correct.astype(np.int8)  # +1: only the other model is right
    rng = np.random.default_rng(seed)
    n = d.size
    boots = np.array([d[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    ref_only, other_only = int((d == -1).sum()), int((d == 1).sum())
    return {"ref_error": float(1 - ref_correct.mean()), "error": float(1 - other_correct.mean()),
            "diff": float(d.mean()), "ci95": [float(lo), float(hi)], "ref_only_right": ref_only,
            "other_only_right": other_only, "mcnemar_p": mcnemar_exact(ref_only, other_only), "images": n}


def compare(ref: str, others: list[str], x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    ref_correct = predict(ref, x) == y
    return {"ref": ref, "ref_error": float(1 - ref_correct.mean()), "images": int(len(y)),
            "models": {p: paired(ref_correct, predict(p, x) == y, seed=seed) for p in others}}


def markdown(report: dict) -> str:
    lines = [f"Reference {report['ref']}: test error {report['ref_error']:.2%} on {report['images']:,} images", "",
             "| model | test error | reference − model [95 %, paired bootstrap] | only ref right | only model right "
             "| McNemar p |", "|---|---:|---:|---:|---:|---:|"]
    for path, r in report["models"].items():
        lo, hi = r["ci95"]
        lines.append(f"| {path} | {r['error']:.2%} | {100 * r['diff']:+.2f} pt [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                     f"| {r['ref_only_right']} | {r['other_only_right']} | {r['mcnemar_p']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help=".onnx models compared with --ref")
    ap.add_argument("--ref", required=True, help="the reference .onnx model")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0, help="dataset split seed and bootstrap seed")
    ap.add_argument("--json", default=None, help="also write the report as JSON to this path")
    args = ap.parse_args(argv)
    for p in [args.ref, *args.models]:
        if not Path(p).is_file():
            raise SystemExit(f"{p}: no such file; give exported .onnx models (e.g. OUT/<method>/model.onnx)")
    from edgeprune.data import load_dataset

    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    x = data.test.x.numpy().astype(np.float32)
    y = data.test.y.numpy()
    report = compare(args.ref, args.models, x, y, seed=args.seed)
    report["dataset"] = args.dataset
    if args.json:
        _io.write_json(args.json, report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
