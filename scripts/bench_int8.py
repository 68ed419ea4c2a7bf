"""INT8 after surgery: dense float vs slim float vs slim INT8, measured side by side (the INT8 goals).

For each run folder (a finished ``edgeprune compress`` run: ``baseline.pt``, ``model.pt`` slim, ``baseline.onnx``,
``model.onnx``), the script copies what it needs into ``--out/NAME`` (the source folder is only read), quantizes the
slim model with ``edgeprune.export.quantize.export_int8`` (static QDQ, per-channel int8 weights, uint8 activations
calibrated on training images of the checkpoint's dataset; the accuracy gate on the whole test split), then times
the three ONNX models with ``edgeprune.bench.bench_models`` in ONE alternating run (dense, slim, INT8, dense, …;
ONNX Runtime, batch 1, 1 thread by default), so machine load hits all three alike. Speedups are over the dense float
model, by median, with 95 % paired block-bootstrap intervals.

Goals checked per model: slim INT8 ≥ 3× faster than dense float (median); INT8 test top-1 error ≤ slim float's
+ 0.5 pt; INT8 .7z ≤ ½ of the slim float .7z.

    .venv/bin/python scripts/bench_int8.py \\
        lenet5=runs/serene-lenet5-macs \\
        resnet20=runs/compare-structured-macs-r8/serene-lb-neurons \\
        --runs 1000 --out runs/int8-goals

Writes ``--out/int8.json`` (everything, raw samples included) and ``--out/int8.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from edgeprune import _io
from edgeprune.bench import ModelSource, bench_models
from edgeprune.checkpoint import load_checkpoint
from edgeprune.export import lzma_7z_bytes
from edgeprune.summary import summarize

log = logging.getLogger("bench_int8")

GOAL_SPEEDUP = 3.0
GOAL_DROP_PT = 0.5
GOAL_7Z_RATIO = 0.5
NEEDED = ("baseline.pt", "model.pt", "baseline.onnx", "model.onnx")


def prepare(name: str, source: Path, out: Path, calibration: str, samples: int) -> dict:
    """Copy the run's float models, quantize the slim one, return the rows' facts (sizes, params, MACs, errors)."""
    from edgeprune.data import load_dataset
    from edgeprune.export.quantize import QuantizeConfig, export_int8

    missing = [f for f in NEEDED if not (source / f).is_file()]
    if missing:
        raise SystemExit(f"error: {source} lacks {', '.join(missing)}; give a finished compress run folder")
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in NEEDED:
        shutil.copyfile(source / f, folder / f)
    base, slim = load_checkpoint(folder / "baseline.pt"), load_checkpoint(folder / "model.pt")
    shape = tuple(slim.meta["input_shape"])
    data = load_dataset(slim.meta["dataset"])
    t0 = time.perf_counter()
    record = export_int8(slim.model, folder, "model", shape, data,
                         QuantizeConfig(calibration=calibration, calibration_samples=samples), ort=True)
    quant_s = time.perf_counter() - t0
    if not record["shipped"]:
        raise SystemExit(f"error: {name}: the INT8 model missed the accuracy gate ({record['drop_pt']:+.2f} pt)")
    rows = {}
    for role, ck, onnx, err in (("dense float", base, "baseline.onnx", base.meta.get("top1_error")),
                                ("slim float", slim, "model.onnx", record["float"]["top1_error"]),
                                ("slim INT8", slim, "model.int8.onnx", record["int8"]["top1_error"])):
        s = summarize(ck.model, shape)
        rows[role] = {"file": onnx, "params": s.params_total, "macs": s.macs, "top1_error": err,
                      "onnx_bytes": (folder / onnx).stat().st_size, "onnx_7z_bytes": lzma_7z_bytes(folder / onnx)}
    return {"name": name, "source": str(source), "dataset": data.name, "folder": str(folder), "rows": rows,
            "int8_record": record, "quantize_seconds": round(quant_s, 1)}


def measure(entry: dict, runs: int, threads: int, seed: int) -> dict:
    folder = Path(entry["folder"])
    sources = [ModelSource(folder / r["file"], label=role, role="baseline" if role == "dense float" else "model")
               for role, r in entry["rows"].items()]
    result = bench_models(sources, runs=runs, warmup=50, threads=threads, seed=seed, warmup_seconds=1.0)
    for m in result.models:
        row = entry["rows"][m.label]
        row["median_ms"] = m.stats["median_ms"]
        row["mean_ms"] = m.stats["mean_ms"]
        if m.speedup is not None:
            row["speedup_median"] = m.speedup["median"]
            row["speedup_ci95"] = m.speedup["ci95"]["median"]
    r = entry["rows"]
    int8, slim = r["slim INT8"], r["slim float"]
    entry["goals"] = {
        "speedup_vs_dense": {"value": int8["speedup_median"], "ci95": int8["speedup_ci95"], "goal": GOAL_SPEEDUP,
                             "met": int8["speedup_median"] >= GOAL_SPEEDUP},
        "error_increase_pt": {"value": 100 * (int8["top1_error"] - slim["top1_error"]), "goal": GOAL_DROP_PT,
                              "met": 100 * (int8["top1_error"] - slim["top1_error"]) <= GOAL_DROP_PT},
        "7z_ratio_vs_slim_float": {"value": int8["onnx_7z_bytes"] / slim["onnx_7z_bytes"], "goal": GOAL_7Z_RATIO,
                                   "met": int8["onnx_7z_bytes"] / slim["onnx_7z_bytes"] <= GOAL_7Z_RATIO},
    }
    entry["bench"] = result.to_dict()
    return entry


def markdown(entries: list[dict], runs: int, threads: int, cpu: str) -> str:
    lines = [f"Measured on {cpu}, ONNX Runtime, batch 1, {threads} thread{'s' if threads > 1 else ''}, {runs} timed "
             "runs per model in one alternating run (blocks of "
             f"{max(1, -(-runs // 20))}), under load (other jobs shared the 2 cores).", "",
             "| Model | Variant | Params | MACs | .onnx [kB] | .7z [kB] | Test top-1 error (%) | Median [ms] | "
             "Speedup vs dense float (median, 95 % CI) |",
             "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in entries:
        for role, r in e["rows"].items():
            sp = ("1.00× (baseline)" if role == "dense float" else
                  f"{r['speedup_median']:.2f}× [{r['speedup_ci95'][0]:.2f}, {r['speedup_ci95'][1]:.2f}]")
            lines.append(f"| {e['name']} | {role} | {r['params']:,} | {r['macs']:,} | {r['onnx_bytes'] / 1000:,.1f} | "
                         f"{r['onnx_7z_bytes'] / 1000:,.1f} | {100 * r['top1_error']:.2f} | {r['median_ms']:.4f} | "
                         f"{sp} |")
    lines += ["", "| Model | INT8 ≥ 3× dense float (median) | INT8 error − slim float error ≤ 0.5 pt | "
                  "INT8 .7z ≤ ½ slim float .7z |", "| :--- | :--- | :--- | :--- |"]
    for e in entries:
        g = e["goals"]
        s, d, z = g["speedup_vs_dense"], g["error_increase_pt"], g["7z_ratio_vs_slim_float"]
        lines.append(f"| {e['name']} | {s['value']:.2f}× [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]: "
                     f"{'met' if s['met'] else 'NOT met'} | {d['value']:+.2f} pt: {'met' if d['met'] else 'NOT met'} "
                     f"| {z['value']:.2f}: {'met' if z['met'] else 'NOT met'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dirs", nargs="+", metavar="NAME=RUN", help="run folders to measure, each named")
    ap.add_argument("--runs", type=int, default=1000, help="timed inferences per model (default 1000)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", default="minmax", help="minmax, entropy or percentile")
    ap.add_argument("--calibration-samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/int8-goals"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    entries = []
    for spec in args.runs_dirs:
        name, _, path = spec.partition("=")
        if not path:
            name, path = Path(spec).name, spec
        log.info("%s: quantizing the slim model of %s", name, path)
        entries.append(prepare(name, Path(path), args.out, args.calibration, args.calibration_samples))
    for e in entries:
        log.info("%s: timing dense float, slim float, slim INT8 (%d runs each)", e["name"], args.runs)
        measure(e, args.runs, args.threads, args.seed)
    cpu = entries[0]["bench"]["device"].get("cpu_model") or "this CPU"
    text = markdown(entries, args.runs, args.threads, cpu)
    _io.write_json(args.out / "int8.json", {"command": " ".join(sys.argv), "entries": entries})
    _io.write_text(args.out / "int8.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
