"""Training-time overhead of each update rule vs plain SGD (SeReNe Sec. V-B: LB 1.34x, exact 3.63x, local 1.05x), and
peak memory of exact sensitivity with class chunking on an AlexNet / CIFAR-100-shaped problem.

    .venv/bin/python scripts/bench_sensitivity_overhead.py --batches 100 --out runs/bench_sensitivity.json

Each method trains the same number of batches of Fashion-MNIST (falls back to random data when the dataset is
absent) from the same initial weights; the ratio is its time over plain SGD's, measured in the same process with
the methods interleaved over ``--repeats`` rounds (the minimum per method is kept: the machine is shared).
Memory is the peak RSS of a fresh subprocess doing a few steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("sgd", "serene-lb", "serene-exact", "serene-ub", "serene-local", "lobster")


def _data(batches: int, batch_size: int):
    try:
        from edgeprune.data import load_dataset

        d = load_dataset("fashion-mnist")
        x, y = d.train.x[: batches * batch_size], d.train.y[: batches * batch_size]
        source = "fashion-mnist"
    except Exception:  # no dataset here: same shapes, random values
        x, y = torch.randn(batches * batch_size, 1, 28, 28), torch.randint(0, 10, (batches * batch_size,))
        source = "random"
    return [(x[i: i + batch_size], y[i: i + batch_size]) for i in range(0, len(y), batch_size)], source


def _time_epoch(arch: str, method: str, batches, init_state) -> float:
    from edgeprune.models import create_model
    from edgeprune.regularize.loop import regularize_epoch
    from edgeprune.regularize.update import Regularizer
    from edgeprune.threshold import full_masks

    model = create_model(arch)
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    name = "l2" if method == "sgd" else method
    lam = 0.0 if method == "sgd" else 1e-5
    t0 = time.perf_counter()
    with Regularizer(model, name, lam, full_masks(model)) as reg:
        regularize_epoch(model, batches, opt, reg)
    return time.perf_counter() - t0


def ratios(archs, batches: int, batch_size: int, repeats: int) -> dict:
    from edgeprune.models import create_model

    data, source = _data(batches, batch_size)
    out = {"data": source, "batches": batches, "batch_size": batch_size, "repeats": repeats,
           "threads": torch.get_num_threads(), "results": {}}
    for arch in archs:
        torch.manual_seed(0)
        init = create_model(arch).state_dict()
        times = {m: [] for m in METHODS}
        for r in range(repeats):
            for m in METHODS:
                times[m].append(_time_epoch(arch, m, data, init))
                print(f"{arch} round {r + 1} {m}: {times[m][-1]:.2f} s", flush=True)
        best = {m: min(v) for m, v in times.items()}
        out["results"][arch] = {"seconds": best, "all_seconds": times,
                                "ratio_vs_sgd": {m: best[m] / best["sgd"] for m in METHODS}}
    return out


def memory_child(arch: str, method: str, chunk: int, batch: int, steps: int) -> dict:
    """One fresh process: a few steps on random data of the model's input shape; peak RSS."""
    from edgeprune.models import create_model, input_shape_of
    from edgeprune.regularize.loop import regularize_epoch
    from edgeprune.regularize.update import Regularizer
    from edgeprune.threshold import full_masks

    torch.manual_seed(0)
    model = create_model(arch)
    shape = input_shape_of(arch)
    classes = model(torch.zeros(1, *shape)).shape[1]
    data = [(torch.randn(batch, *shape), torch.randint(0, classes, (batch,))) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    name = "l2" if method == "sgd" else method
    t0 = time.perf_counter()
    with Regularizer(model, name, 0.0 if method == "sgd" else 1e-5, full_masks(model), class_chunk=chunk) as reg:
        regularize_epoch(model, data, opt, reg)
    return {"arch": arch, "method": method, "class_chunk": chunk, "batch": batch, "steps": steps,
            "classes": int(classes), "seconds_per_step": (time.perf_counter() - t0) / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def memory(arch: str, chunks, batch: int, steps: int) -> list[dict]:
    rows = []
    for method, chunk in [("sgd", 1), ("serene-lb", 1)] + [("serene-exact", c) for c in chunks]:
        cmd = [sys.executable, __file__, "--memory-child", arch, method, str(chunk), str(batch), str(steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{arch} {method} chunk {chunk}: peak RSS {row['peak_rss_mb']:.0f} MB, "
              f"{row['seconds_per_step']:.2f} s/step", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--archs", default="lenet300,lenet5")
    ap.add_argument("--memory-arch", default="alexnet-cifar")
    ap.add_argument("--memory-chunks", default="4,16,100")
    ap.add_argument("--memory-batch", type=int, default=32)
    ap.add_argument("--memory-steps", type=int, default=2)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", default="runs/bench_sensitivity.json")
    ap.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        arch, method, chunk, batch, steps = args.memory_child
        print(json.dumps(memory_child(arch, method, int(chunk), int(batch), int(steps))))
        return
    result = ratios(args.archs.split(","), args.batches, args.batch_size, args.repeats)
    if not args.skip_memory:
        result["memory"] = memory(args.memory_arch, [int(c) for c in args.memory_chunks.split(",")],
                                  args.memory_batch, args.memory_steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for arch, r in result["results"].items():
        print(arch, " ".join(f"{m}={v:.2f}x" for m, v in r["ratio_vs_sgd"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
