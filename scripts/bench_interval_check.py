"""Repeat check of the speedup interval on real timings: for bench JSONs of repeated runs of the same pair, print each
run's speedup by median with its paired block-bootstrap interval and with the old per-run interval (recomputed from
the same raw samples), and how many of the *other* runs' point estimates each interval holds.

Even if every repeat measured the same true ratio, a calibrated 95 % interval would hold another repeat's estimate
only about 83 % of the time (the difference of two estimates has √2 times the spread of one). Repeats are not draws
from one fixed distribution either (the machine's state changes between them), so this is a sanity check, not a
coverage measurement; tests/test_bench_stats.py measures coverage where the true ratio is known.

    for i in $(seq 1 10); do edgeprune bench runs/lenet5-widths --json runs/lenet5-widths/rep-$i.json; done
    .venv/bin/python scripts/bench_interval_check.py runs/lenet5-widths/rep-*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeprune.bench.stats import speedup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="bench JSONs (a baseline and one slim model each)")
    args = ap.parse_args(argv)
    rows = []
    for path in args.json:
        d = json.loads(Path(path).read_text())
        base = next(m for m in d["models"] if m["role"] == "baseline")
        slim = next(m for m in d["models"] if m["role"] != "baseline")
        per_run = speedup(base["samples_ms"], slim["samples_ms"], seed=d["seed"])
        rows.append((path, d["speedup"], per_run, (d["device"].get("load_average") or [None])[0]))
    estimates = [sp["median"] for _, sp, _, _ in rows]
    print("| run | load | dense / slim by median | block 95 % CI | holds others | per-run 95 % CI | holds others |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = [0, 0]
    for i, (path, sp, old, load) in enumerate(rows):
        others = [e for j, e in enumerate(estimates) if j != i]
        cells = []
        for k, ci in enumerate((sp["ci95"]["median"], old["ci95"]["median"])):
            held = sum(ci[0] <= e <= ci[1] for e in others)
            totals[k] += held
            cells += [f"[{ci[0]:.3f}, {ci[1]:.3f}]", f"{held}/{len(others)}"]
        print(f"| {Path(path).name} | {load} | {sp['median']:.3f}× | " + " | ".join(cells) + " |")
    pairs = len(rows) * (len(rows) - 1)
    print(f"\nother runs' estimates inside: block {totals[0]}/{pairs}, per-run {totals[1]}/{pairs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
