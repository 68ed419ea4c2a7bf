"""Which neuron ranking prunes best? One neuron-level threshold step per score, same network, same loss bound.

For a trained checkpoint, each score of :data:`edgeprune.threshold.neurons.SCORES` ranks the neurons; the bisection
prunes the largest set of lowest-ranked neurons whose validation loss stays within (1 + TWT)·L̂ (no training in
between, so the ranking alone decides). A better ranking removes more neurons under the same
bound. Reported per score and TWT: neurons pruned, neurons left, validation loss and accuracy.

    .venv/bin/python scripts/neuron_scores.py runs/compare-structured/baseline.pt --val-subset 3000 --twt 0.1,0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.checkpoint import load_checkpoint  # noqa: E402
from edgeprune.data import load_dataset  # noqa: E402
from edgeprune.masks import apply_masks_, full_masks  # noqa: E402
from edgeprune.summary import summarize  # noqa: E402
from edgeprune.threshold.neurons import SCORES, find_neuron_threshold, neuron_groups, taylor_scores  # noqa: E402
from edgeprune.train import evaluate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--dataset", default=None, help="default: the checkpoint's")
    ap.add_argument("--val-subset", type=int, default=3000, help="validation images used (seeded; 0 = all)")
    ap.add_argument("--twt", default="0.1,0.5", help="comma-separated TWT values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    model = ck.model.eval()
    data = load_dataset(args.dataset or ck.meta.get("dataset", "fashion-mnist"), seed=args.seed)
    val = data.val
    if args.val_subset and args.val_subset < len(val):
        g = torch.Generator().manual_seed(args.seed)
        val = val.subset(torch.randperm(len(val), generator=g)[:args.val_subset].sort().values)
    from edgeprune.data import Batches

    batches = Batches(val, 500)
    shape = tuple(data.input_shape)
    base = evaluate(model, batches)
    dense = summarize(model, shape)
    groups = neuron_groups(model, shape)
    rows = []
    for twt in [float(t) for t in args.twt.split(",")]:
        bound = (1 + twt) * base["loss"]
        for score in SCORES:
            t0 = time.time()
            scores = taylor_scores(model, groups, batches) if score == "taylor" else None
            res = find_neuron_threshold(model, full_masks(model), groups, lambda m: evaluate(m, batches)["loss"],
                                        lambda v: v <= bound, score, scores=scores)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            apply_masks_(model, res.masks)
            after = evaluate(model, batches)
            s = summarize(model, shape)
            model.load_state_dict(state)
            row = {"twt": twt, "score": score, "neurons_pruned": res.pruned,
                   "neurons_alive": sum(s.alive_neurons[:-1]), "neurons_total": sum(dense.neurons[:-1]),
                   "val_loss": after["loss"], "val_accuracy": after["accuracy"], "bound": bound,
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(f"TWT {twt:<4} {score:<6} pruned {res.pruned:4d} neurons  alive {row['neurons_alive']}/"
                  f"{row['neurons_total']}  val loss {after['loss']:.4f} (bound {bound:.4f})  acc "
                  f"{100 * after['accuracy']:.2f}%  ({row['seconds']} s)", flush=True)
    result = {"checkpoint": str(args.checkpoint), "baseline_val": base, "rows": rows,
              "command": " ".join([".venv/bin/python", "scripts/neuron_scores.py", *(argv or sys.argv[1:])])}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
