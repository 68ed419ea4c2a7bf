"""Check a latency table's prediction when several neuron groups are narrowed together.

    .venv/bin/python scripts/latency_multi_group.py TABLE.json MODEL.pt [--widths 0=15,3=38,7=375 ...] [--runs 300]

Builds the slim model of each width set with the real surgery, times it against the dense model in one alternating
ONNX Runtime run (1 thread, the bench protocol) and prints, per width set, the measured median next to the table's
prediction (``LatencyTable.predict``: the product of the groups' latency ratios) and next to the sum of the groups'
deltas (the first version's rule), with each one's error predicted ÷ measured − 1.
"""

from __future__ import annotations

import argparse

from edgeprune.bench import ModelSource, bench_models
from edgeprune.checkpoint import load_checkpoint
from edgeprune.latency import LatencyTable, narrowed
from edgeprune.threshold.neurons import neuron_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("model")
    ap.add_argument("--widths", action="append", help="root=width,... (repeatable); default: every group at 75, 50 "
                                                      "and 25 %% of its size")
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    table = LatencyTable.load(args.table)
    loaded = load_checkpoint(args.model)
    model = loaded.model.eval()
    shape = tuple(table.model.get("input_shape") or loaded.meta["input_shape"])
    if args.widths:
        cases = [{k: int(v) for k, v in (kv.split("=") for kv in w.split(","))} for w in args.widths]
    else:
        cases = [{g.root: max(1, table.rounded(round(g.size * f))) for g in table.groups} for f in (0.75, 0.5, 0.25)]
    sources = [ModelSource(module=model, label="dense", role="baseline", input_shape=shape)]
    for case in cases:
        slim = model
        for root, width in case.items():
            group = next(g for g in neuron_groups(slim, shape) if g.root == root)
            slim = narrowed(slim, group, width, shape, table.round_channels)
        sources.append(ModelSource(module=slim, label=",".join(f"{r}={w}" for r, w in case.items()),
                                   input_shape=shape))
    result = bench_models(sources, runtime="onnxruntime", runs=args.runs, warmup=20, threads=1, input_shape=shape,
                          seed=0, progress=False, warmup_seconds=0.5)
    med = {m.label: m.stats["median_ms"] for m in result.models}
    print(f"dense: measured {med['dense']:.4f} ms, table {table.baseline_ms:.4f} ms")
    for source, case in zip(sources[1:], cases):
        measured = med[source.label]
        summed = table.baseline_ms + sum(g.delta(min(g.size, table.rounded(case[g.root])))
                                         for g in table.groups if g.root in case)
        product = table.predict(case)
        print(f"{source.label}: measured {measured:.4f} ms ({med['dense'] / measured:.2f}x); predicted {product:.4f} ms "
              f"({product / measured - 1:+.1%}); sum of deltas {summed:.4f} ms ({summed / measured - 1:+.1%})")


if __name__ == "__main__":
    main()
