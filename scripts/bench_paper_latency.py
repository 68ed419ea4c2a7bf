"""Latency of the paper's architectures, dense vs SeReNe-pruned, on this CPU (SeReNe Table X, measured locally).

The pruned models are built the way the pipeline builds them: the zoo model, hand-made masks that kill the channels
the paper's tables say were pruned (weight rows, biases and BN γ/β zeroed, as thresholding leaves them), then
``edgeprune.surgery.surgery`` cuts them out (optionally rounding widths up to multiples of 8). Weights are random:
latency depends on the widths, not on the values.

- VGG-1 (``vgg16-cifar``): SeReNe LB surviving filters of Table V,
  [23]-[64] [126]-[123] [250]-[251]-[250] [382]-[93]-[136] [65]-[76]-[373], FC [10].
- AlexNet (``alexnet-cifar``): Table VIII, [64]-[191]-[384]-[256]-[256]-[3322]-[1310]-[100].
- ResNet-32 (``resnet32-cifar``): Table VII gives per-block totals only (Conv1 [12], Block1 [93], Block2 [203],
  Block3 [364], FC [10]: 40.5 % fewer neurons). The residual stream of a stage is one coupled group (identity
  shortcuts add it up), so we keep stream widths 12 / 28 / 48 (stage 1's stream is Conv1's output, hence 12) and
  give the inner conv1 of each block the rest of the block total: 33 / 63 / 124 channels over its five blocks.

Each comparison runs ``edgeprune.bench.bench_models`` (ONNX Runtime, batch 1, dense and slim alternating in blocks
of 50) at 1 and 2 threads, for the exact widths and for widths rounded up to multiples of 8.

    .venv/bin/python scripts/bench_paper_latency.py --runs 1000 --out runs/paper_latency
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune import _io
from edgeprune.bench import ModelSource, bench_models, export_onnx_for_bench
from edgeprune.models import create_model, input_shape_of
from edgeprune.summary import summarize

log = logging.getLogger("bench_paper_latency")

# SeReNe Table X (Huawei P20, mean of 1,000 inferences, ms): baseline, SeReNe (LB).
TABLE_X = {"resnet32-cifar": (32.12, 24.83), "vgg16-cifar": (204.21, 98.67), "alexnet-cifar": (131.41, 75.27)}
PAPER_NAME = {"resnet32-cifar": "ResNet-32", "vgg16-cifar": "VGG-16 (VGG-1)", "alexnet-cifar": "AlexNet"}

VGG1_TABLE_V = [23, 64, 126, 123, 250, 251, 250, 382, 93, 136, 65, 76, 373]
ALEXNET_TABLE_VIII = {"convs": [64, 191, 384, 256, 256], "fcs": [3322, 1310]}
RESNET32_STREAM = (12, 28, 48)
RESNET32_INNER = ([7, 7, 7, 6, 6], [13, 13, 13, 12, 12], [25, 25, 25, 25, 24])


def _keep_plan(arch: str, model: nn.Module) -> dict[str, int]:
    """Layer name → number of leading output channels that survive (the rest are killed)."""
    if arch == "vgg16-cifar":
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        return dict(zip(convs, VGG1_TABLE_V, strict=True))
    if arch == "alexnet-cifar":
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        fcs = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:-1]  # the output layer stays
        return {**dict(zip(convs, ALEXNET_TABLE_VIII["convs"], strict=True)),
                **dict(zip(fcs, ALEXNET_TABLE_VIII["fcs"], strict=True))}
    if arch == "resnet32-cifar":
        plan = {"conv1": RESNET32_STREAM[0]}
        for stage in range(3):
            for i in range(5):
                block = f"layers.{stage * 5 + i}"
                plan[f"{block}.conv1"] = RESNET32_INNER[stage][i]
                plan[f"{block}.conv2"] = RESNET32_STREAM[stage]  # the stream: every producer of the coupled group
                if stage > 0 and i == 0:
                    plan[f"{block}.shortcut.0"] = RESNET32_STREAM[stage]
        return plan
    raise SystemExit(f"no pruned widths known for {arch}")


def kill_channels_(model: nn.Module, keep: dict[str, int]) -> None:
    """Zero the weight rows, bias and following BatchNorm γ/β of every channel past ``keep[layer]``: the channel then
    outputs exactly zero, i.e. it is dead the way SeReNe's thresholding leaves a pruned neuron."""
    mods = list(model.named_modules())
    found = set()
    with torch.no_grad():
        for i, (name, m) in enumerate(mods):
            if name not in keep:
                continue
            k = keep[name]
            found.add(name)
            m.weight[k:] = 0
            if m.bias is not None:
                m.bias[k:] = 0
            for _, nxt in mods[i + 1:]:
                if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.weight.shape[0]:
                    nxt.weight[k:] = 0
                    nxt.bias[k:] = 0
                    break
                if isinstance(nxt, (nn.Conv2d, nn.Linear)):
                    break
    missing = set(keep) - found
    if missing:
        raise SystemExit(f"layers not found in the model: {sorted(missing)}")


def _round_up(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


def build_pair(arch: str, round_channels: int | None, seed: int = 0):
    """(dense, slim, surgery report) for ``arch``; slim widths checked against the intended ones."""
    from edgeprune.surgery import surgery

    torch.manual_seed(seed)
    dense = create_model(arch).eval()
    shape = input_shape_of(arch)
    masked = create_model(arch).eval()
    masked.load_state_dict(dense.state_dict())
    keep = _keep_plan(arch, masked)
    kill_channels_(masked, keep)
    result = surgery(masked, shape, round_channels=round_channels)
    slim = result.model.eval()
    widths = {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
              for n, m in slim.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    full = {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for name, k in keep.items():
        want = min(_round_up(k, round_channels), full[name]) if round_channels else k
        if widths[name] != want:
            raise SystemExit(f"{arch}: surgery left {widths[name]} channels in {name}, expected {want}")
    return dense, slim, result.report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="resnet32-cifar,vgg16-cifar,alexnet-cifar")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--round-channels", default="none,8",
                    help="width variants: none (exact widths) and/or multiples to round up to, e.g. none,8")
    ap.add_argument("--out", default="runs/paper_latency", help="folder for the ONNX files and the JSON results")
    ap.add_argument("--from-json", help="only re-render the table of an earlier run's paper_latency.json")
    args = ap.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())["rows"]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edgeprune").setLevel(logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = args.archs.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    rounds = [None if r == "none" else int(r) for r in args.round_channels.split(",")]
    rows = []
    t_start = time.perf_counter()
    for arch in archs:
        shape = input_shape_of(arch)
        for rc in rounds:
            dense, slim, report = build_pair(arch, rc)
            tag = f"r{rc}" if rc else "exact"
            dense_path = out / f"{arch}-dense.onnx"
            if not dense_path.exists():
                export_onnx_for_bench(dense, shape, dense_path)
            slim_path = export_onnx_for_bench(slim, shape, out / f"{arch}-slim-{tag}.onnx")
            sd, ss = summarize(dense, shape), summarize(slim, shape)
            for th in threads:
                log.info("%s %s: %d threads, %d runs", arch, tag, th, args.runs)
                res = bench_models(
                    [ModelSource(dense_path, label=f"{arch} dense", role="baseline"),
                     ModelSource(slim_path, label=f"{arch} slim {tag}")],
                    runtime="onnxruntime", runs=args.runs, warmup=args.warmup, threads=th, batch_size=1,
                    input_shape=None, block_size=args.block_size, seed=0, progress=True)
                d, s = res.models
                rows.append({
                    "arch": arch, "round_channels": rc, "threads": th, "runs": args.runs,
                    "dense": {k: d.stats[k] for k in ("mean_ms", "std_ms", "median_ms", "p90_ms", "p99_ms", "min_ms")},
                    "slim": {k: s.stats[k] for k in ("mean_ms", "std_ms", "median_ms", "p90_ms", "p99_ms", "min_ms")},
                    "speedup": res.speedup,
                    "macs": [sd.macs, ss.macs], "params": [sd.params_total, ss.params_total],
                    "neurons": [sum(sd.neurons), sum(ss.neurons)],
                    "slim_neurons": ss.neurons,
                    "onnx_bytes": [dense_path.stat().st_size, slim_path.stat().st_size],
                    "table_x_ratio": TABLE_X[arch][0] / TABLE_X[arch][1],
                    "device": res.device,
                    "bench": res.to_dict(),
                })
                log.info("  dense %.3f ms, slim %.3f ms (median): %.2fx", d.stats["median_ms"], s.stats["median_ms"],
                         res.speedup["median"])
    elapsed = time.perf_counter() - t_start
    _io.write_json(out / "paper_latency.json", {"rows": rows, "seconds": round(elapsed, 1), "argv": sys.argv})
    print(markdown(rows))
    print(f"\n{elapsed:.0f} s; results in {out / 'paper_latency.json'}")
    return 0


def markdown(rows: list[dict]) -> str:
    lines = ["| architecture | widths | threads | dense mean ± std [ms] | slim mean ± std [ms] | dense / slim median "
             "| speedup by median [95% CI] | speedup by mean | min ratio | MACs ratio | params ratio "
             "| P20 (Table X, by mean) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sp = r["speedup"]
        lo, hi = sp["ci95"]["median"]
        dmin, smin = (m["min_ms"] for m in r["bench"]["models"])
        lines.append(
            f"| {PAPER_NAME[r['arch']]} | {'exact' if not r['round_channels'] else 'x' + str(r['round_channels'])} "
            f"| {r['threads']} | {r['dense']['mean_ms']:.3f} ± {r['dense']['std_ms']:.3f} "
            f"| {r['slim']['mean_ms']:.3f} ± {r['slim']['std_ms']:.3f} "
            f"| {r['dense']['median_ms']:.3f} / {r['slim']['median_ms']:.3f} "
            f"| {sp['median']:.2f}× [{lo:.2f}, {hi:.2f}] | {sp['mean']:.2f}× | {dmin / smin:.2f}× "
            f"| {r['macs'][0] / r['macs'][1]:.2f}× "
            f"| {r['params'][0] / r['params'][1]:.2f}× | {r['table_x_ratio']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
