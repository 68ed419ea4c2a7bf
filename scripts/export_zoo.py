"""Export every zoo model (random weights) to .onnx/.7z/.ptl/.ort and print a Markdown table of sizes, max |Δ| and
wall time per model — the figures in docs/export.md.

    .venv/bin/python scripts/export_zoo.py [--models lenet300,lenet5] [--formats onnx,ptl,ort] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from edgeprune.export import export_all
from edgeprune.models import create_model, input_shape_of, list_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--formats", default="onnx,ptl,ort")
    ap.add_argument("--out", default=None, help="Keep the artifacts here (default: a temporary folder).")
    args = ap.parse_args()
    print("| model | params | .onnx [kB] | .7z [kB] | .ptl [kB] | .ort [kB] | max abs diff (onnx / ptl / ort) | "
          "slim | seconds |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | :--- | :--- | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = create_model(name).eval()
            t0 = time.perf_counter()
            r = export_all(model, args.out or tmp, name, input_shape_of(name), formats=args.formats.split(","))
            dt = time.perf_counter() - t0
            kb = lambda k: f"{r[k] / 1000:,.0f}" if k in r else "–"  # noqa: E731
            diffs = " / ".join(f"{r['max_abs_diff'][f]:.1e}" for f in r["max_abs_diff"])
            slim = r["artifacts"]["onnx"]["slim"] if "onnx" in r["artifacts"] else "–"
            print(f"| {name} | {r['params_total']:,} | {kb('onnx_bytes')} | {kb('onnx_7z_bytes')} | {kb('ptl_bytes')} "
                  f"| {kb('ort_bytes')} | {diffs} | {slim} | {dt:.1f} |", flush=True)


if __name__ == "__main__":
    main()
