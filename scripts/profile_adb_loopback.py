#!/usr/bin/env python
"""How long `edgeprune profile --device adb` takes, measured without a phone: the loopback ADB device of the test
suite (the real ADB wire protocol, a private sandbox for /data/local/tmp) presenting itself as an x86_64 device,
and the native x86_64 build of the ort-c runner bundle — the same harness, pushes, runner processes and alternating
blocks a phone run makes, without qemu. Inference times are this machine's, not a phone's: the script reports the
total time and the share spent in timed inferences, so the phone time can be estimated by scaling that share.

    .venv/bin/python scripts/profile_adb_loopback.py runs/lenet5-base20.pt --out runs/lenet5-adb-loopback.json \\
        --bundle .cache/runner/1.32.0-x86_64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="checkpoint to profile")
    ap.add_argument("--out", required=True, help="latency table to write")
    ap.add_argument("--bundle", required=True, help="the x86_64 ort-c runner bundle (scripts/build_runner.py)")
    ap.add_argument("--round-channels", type=int, default=None)
    ap.add_argument("--fractions", default="0.75,0.5,0.25")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args(argv)

    from adb_loopback.sandbox import Sandbox
    from adb_loopback.server import LoopbackAdbDevice
    from android_bench.transport import ensure_adb_key

    from edgeprune.checkpoint import load_checkpoint
    from edgeprune.latency import profile_model

    with tempfile.TemporaryDirectory(prefix="edgeprune-loopback-") as tmp:
        home = Path(tmp) / "home"
        ensure_adb_key(home / ".android" / "adbkey")
        os.environ["HOME"] = str(home)
        props = {"ro.product.cpu.abi": "x86_64", "ro.product.cpu.abilist": "x86_64,arm64-v8a",
                 "ro.product.cpu.abilist64": "x86_64,arm64-v8a"}
        device = LoopbackAdbDevice(Sandbox(Path(tmp) / "phone", props=props, machine="x86_64"))
        device.start()
        try:
            loaded = load_checkpoint(args.model)
            t0 = time.perf_counter()
            table = profile_model(loaded.model, tuple(loaded.meta["input_shape"]), device="adb",
                                  fractions=tuple(float(f) for f in args.fractions.split(",")),
                                  round_channels=args.round_channels, runs=args.runs, warmup=args.warmup,
                                  serial=device.serial, runner=f"ort-c:{Path(args.bundle).resolve()}",
                                  cooldown_seconds=0, checkpoint=args.model, progress=False)
            seconds = time.perf_counter() - t0
        finally:
            device.stop()
    table.save(args.out)
    n_models = 1 + sum(len(g.widths) - 1 for g in table.groups)
    timed = sum(sum(g.latency_ms[1:]) for g in table.groups) * args.runs / 1000 + table.baseline_ms * args.runs / 1000
    print(json.dumps({"model": args.model, "groups": len(table.groups), "models_timed": n_models,
                      "runs": args.runs, "seconds_total": round(seconds, 1),
                      "seconds_in_timed_inferences": round(timed, 2), "dense_ms": table.baseline_ms,
                      "out": args.out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
