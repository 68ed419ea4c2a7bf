#!/usr/bin/env python3
"""Build (or reuse) the edgeprune ONNX Runtime C runner bundles from registry packages.

    python scripts/build_runner.py                 # arm64 bundle (for phones) and the native x86_64 build
    python scripts/build_runner.py --arch arm64 --force --size

Prints each bundle's folder (and, with --size, its raw and gzip-compressed byte counts).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from android_bench.errors import AndroidBenchError  # noqa: E402
from android_bench.runner_build import ARCHES, build_bundle, bundle_size  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=[*ARCHES, "all"], default="all")
    ap.add_argument("--cache-dir", type=pathlib.Path, default=None, help="default: ~/.cache/edgeprune/runner")
    ap.add_argument("--ort-version", default=None, help="default: the installed onnxruntime version")
    ap.add_argument("--force", action="store_true", help="rebuild even when a cached bundle matches")
    ap.add_argument("--size", action="store_true", help="print the bundle size (raw and .tar.gz bytes)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[build_runner] %(message)s")
    arches = ARCHES if args.arch == "all" else (args.arch,)
    try:
        for arch in arches:
            path = build_bundle(arch, args.cache_dir, ort_version=args.ort_version, force=args.force)
            line = f"{arch}\t{path}"
            if args.size:
                size = bundle_size(path)
                line += f"\traw={size['raw']}\tgzip={size['gzip']}"
            print(line)
    except AndroidBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
