"""``python -m android_bench``: list devices, describe one, or benchmark models without the edgeprune CLI.

    python -m android_bench devices
    python -m android_bench describe --serial 192.168.1.20:5555
    python -m android_bench bench model.onnx --baseline baseline.onnx --serial 192.168.1.20:5555 --out result.json

Known errors print one line and exit 1; set ANDROID_BENCH_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys

from android_bench.errors import AndroidBenchError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m android_bench",
                                 description="Benchmark ONNX models on a phone over ADB.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what the harness does")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("devices", help="list devices (from a running adb server and USB)")
    d.add_argument("--adb-port", type=int, default=None,
                   help="adb server port (default $ANDROID_ADB_SERVER_PORT or 5037)")
    s = sub.add_parser("describe", help="print one device's record as JSON")
    s.add_argument("--serial", default=None, help="IP:PORT or USB serial")
    b = sub.add_parser("bench", help="time models on the device")
    b.add_argument("models", nargs="+", type=pathlib.Path)
    b.add_argument("--baseline", type=pathlib.Path, default=None, help="dense model, interleaved with the others")
    b.add_argument("--serial", default=None, help="IP:PORT (after `adb tcpip 5555`) or USB serial")
    b.add_argument("--runner", default="python-ort", help="runner name, e.g. python-ort, ort-c, perf_test:PATH")
    b.add_argument("--runs", type=int, default=1000)
    b.add_argument("--warmup", type=int, default=50)
    b.add_argument("--threads", type=int, default=None, help="default: number of pinned cores")
    b.add_argument("--cores", default=None,
                   help="big (default: every cluster but the slowest), prime (the fastest cluster), all, or a hex mask")
    b.add_argument("--cooldown", type=float, default=60.0, help="max seconds to wait for idle temperature")
    b.add_argument("--rounds", type=int, default=None,
                   help="blocks per model, each its own runner process (default: ~100 runs a block, 2 to 10)")
    b.add_argument("--timeout", type=float, default=None, help="seconds per block before the runner is stopped")
    b.add_argument("--keep", action="store_true", help="leave pushed files on the device (next run reuses them)")
    b.add_argument("--out", type=pathlib.Path, default=None, help="write the result JSON here (also partial results)")
    b.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "devices":
            from android_bench.devices import list_devices

            devices = list_devices(args.adb_port)
            if not devices:
                print("no devices found (start `adb start-server`, or pass --serial IP:PORT to bench)")
            for dev in devices:
                extra = " ".join(f"{k}:{v}" for k, v in dev.items() if k not in ("serial", "state", "source"))
                print(f"{dev['serial']}\t{dev['state']}\t{dev['source']}\t{extra}".rstrip())
        elif args.command == "describe":
            from android_bench.devices import describe_device

            print(json.dumps(describe_device(args.serial), indent=1))
        else:
            from android_bench.bench import run_benchmark

            result = run_benchmark(
                args.models, args.serial, runner=args.runner, runs=args.runs, warmup=args.warmup,
                threads=args.threads, cores=args.cores, cooldown_seconds=args.cooldown, keep=args.keep,
                partial_path=args.out, progress=not args.no_progress, baseline=args.baseline, rounds=args.rounds,
                timeout_s=args.timeout,
            )
            if args.out is None:
                print(json.dumps(result, indent=1))
            else:
                for res in result["results"]:
                    s = sorted(res["samples_ms"])
                    print(f"{res['model']}\t{res['role']}\truns={res['runs']}\tmedian_ms={s[len(s) // 2]:.4f}\t"
                          f"throttled={res['throttled']}")
                print(f"result written to {args.out}")
    except AndroidBenchError as exc:
        if os.environ.get("ANDROID_BENCH_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
