"""Measure the harness's ADB transport over the loopback device: push throughput and per-command overhead.

    .venv/bin/python scripts/bench_adb_push.py [--mib 5] [--echo 50] [--json out.json]

Compares android_bench's transport (adb-shell + TCP_NODELAY, complete writes) with stock adb-shell
(``AdbDeviceTcp``, no TCP_NODELAY). The stock transport waits for delayed ACKs (~40 ms per message), so it pushes only
256 KiB first and extrapolates linearly to 5 MiB; only when that estimate is under 15 s is the full
push measured too. The table says which numbers are measured and which are extrapolated.
Everything runs on 127.0.0.1; a real phone over Wi-Fi or USB adds its own link latency on top of these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the loopback device lives with the tests, not in the product
sys.path.insert(0, str(REPO))


def _stock_device(serial: str, key: pathlib.Path):
    from adb_shell.adb_device import AdbDeviceTcp
    from adb_shell.auth.sign_cryptography import CryptographySigner

    host, port = serial.rsplit(":", 1)
    dev = AdbDeviceTcp(host, int(port), default_transport_timeout_s=30.0)
    dev.connect(rsa_keys=[CryptographySigner(str(key))], auth_timeout_s=10.0)
    return dev


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=float, default=5.0, help="size of the harness push (MiB)")
    ap.add_argument("--stock-kib", type=int, default=256, help="size of the stock adb-shell push (KiB)")
    ap.add_argument("--echo", type=int, default=50, help="shell round trips to average")
    ap.add_argument("--repeat", type=int, default=3, help="pushes per measurement (best and mean reported)")
    ap.add_argument("--stock-full-limit-s", type=float, default=15.0,
                    help="also push the full size with stock adb-shell when the extrapolation is below this")
    ap.add_argument("--device-maxdata", type=int, default=256 * 1024,
                    help="max ADB payload the loopback device offers (256 KiB like adbd; 4096 like old phones)")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)

    from adb_loopback import start_device
    from android_bench.transport import AdbConnection, ensure_adb_key

    with tempfile.TemporaryDirectory(prefix="bench_adb_push-") as tmp:
        tmp = pathlib.Path(tmp)
        key = ensure_adb_key(tmp / "home" / ".android" / "adbkey")
        dev = start_device(tmp / "phone", maxdata=args.device_maxdata)
        try:
            big = tmp / "big.bin"
            big.write_bytes(os.urandom(int(args.mib * 1024 * 1024)))
            small = tmp / "small.bin"
            small.write_bytes(os.urandom(args.stock_kib * 1024))
            rows = []
            with AdbConnection(dev.serial, key_path=key) as conn:
                t = _time(lambda: conn.push(big, "/data/local/tmp/big.bin"), args.repeat)
                assert (dev.sandbox.root / "data/local/tmp/big.bin").read_bytes() == big.read_bytes()
                rows.append(("harness push", f"{args.mib:g} MiB", min(t), statistics.mean(t), "measured"))
                t = _time(lambda: conn.run("echo x"), args.echo)
                rows.append(("harness `shell echo` + exit code", "1 round trip", min(t), statistics.mean(t),
                             f"mean of {args.echo}"))
                t = _time(lambda: conn.shell_raw("echo x"), args.echo)
                rows.append(("harness `shell echo` (no sentinel)", "1 round trip", min(t), statistics.mean(t),
                             f"mean of {args.echo}"))
            stock = _stock_device(dev.serial, key)
            try:
                t = _time(lambda: stock.push(str(small), "/data/local/tmp/small.bin"), 1)
                scale = (args.mib * 1024) / args.stock_kib
                rows.append(("stock adb-shell push", f"{args.stock_kib} KiB", t[0], t[0], "measured"))
                rows.append(("stock adb-shell push", f"{args.mib:g} MiB", t[0] * scale, t[0] * scale,
                             f"extrapolated ×{scale:g}"))
                if t[0] * scale < args.stock_full_limit_s:
                    # Cheap enough to measure for real as well (bounded by the extrapolation above).
                    t = _time(lambda: stock.push(str(big), "/data/local/tmp/big_stock.bin"), 1)
                    rows.append(("stock adb-shell push", f"{args.mib:g} MiB", t[0], t[0], "measured"))
                n = max(5, args.echo // 5)
                t = _time(lambda: stock.shell("echo x"), n)
                rows.append(("stock adb-shell `shell echo`", "1 round trip", min(t), statistics.mean(t),
                             f"mean of {n}"))
            finally:
                stock.close()
        finally:
            dev.stop()

    print(f"loopback device maxdata: {args.device_maxdata} bytes")
    print(f"{'what':38} {'size':>12} {'best':>10} {'mean':>10}  note")
    for what, size, best, mean, note in rows:
        print(f"{what:38} {size:>12} {best * 1000:>8.1f}ms {mean * 1000:>8.1f}ms  {note}")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("what", "size", "best_s", "mean_s", "note"), r)) for r in rows],
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
