"""A dense LeNet-5 and a slim one with given surviving widths, as a run folder `edgeprune bench` reads.

The slim model is made the way the pipeline makes it: the zoo LeNet-5, the channels past each layer's surviving count
killed (weight rows and bias zeroed, as thresholding leaves them), then ``edgeprune.surgery.surgery`` cuts them out.
Weights are random: latency depends on the widths. The default widths [20]-[46]-[256]-[10] are those of
``runs/serene-lenet5`` (README, docs/serene.md), so the pair reproduces that run's latency without its 22-minute
training.

    .venv/bin/python scripts/lenet5_width_pair.py --out runs/lenet5-widths
    edgeprune bench runs/lenet5-widths --json runs/lenet5-widths/bench-1.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from edgeprune.bench import export_onnx_for_bench
from edgeprune.models import create_model, input_shape_of
from edgeprune.surgery import surgery


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="20,46,256", help="surviving conv1, conv2, fc1 widths (fc2 keeps its 10)")
    ap.add_argument("--out", default="runs/lenet5-widths")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    keep = [int(v) for v in args.widths.split(",")]
    torch.manual_seed(args.seed)
    shape = input_shape_of("lenet5")
    dense = create_model("lenet5").eval()
    masked = create_model("lenet5").eval()
    masked.load_state_dict(dense.state_dict())
    layers = [m for m in masked.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]  # the output layer stays
    if len(keep) != len(layers):
        raise SystemExit(f"--widths needs {len(layers)} numbers, got {len(keep)}")
    with torch.no_grad():
        for layer, k in zip(layers, keep):
            layer.weight[k:] = 0
            layer.bias[k:] = 0
    slim = surgery(masked, shape).model.eval()
    widths = [m.weight.shape[0] for m in slim.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    if widths != keep:
        raise SystemExit(f"surgery left widths {widths}, expected {keep}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx_for_bench(dense, shape, out / "baseline.onnx")
    export_onnx_for_bench(slim, shape, out / "model.onnx")
    print(f"{out / 'baseline.onnx'} (dense) and {out / 'model.onnx'} (widths {widths})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
