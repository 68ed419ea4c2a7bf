#!/usr/bin/env bash
# README's demo command: set everything up, then run edgeprune's main job on its default, stage by stage.
# Default: LeNet-5 on Fashion-MNIST. Everything lands in runs/demo/ (override with DEMO_DIR=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DEMO_DIR=${DEMO_DIR:-runs/demo}
EPOCHS=${DEMO_EPOCHS:-8}
mkdir -p "$DEMO_DIR"

# 1. Train the baseline LeNet-5 on the official Fashion-MNIST split (best epoch on 10 % validation kept).
if [ ! -f "$DEMO_DIR/base.pt" ]; then
  edgeprune train --arch lenet5 --dataset fashion-mnist --epochs "$EPOCHS" --out "$DEMO_DIR/base.pt"
fi

# 2. Its summary: neurons, parameters and MACs per layer, and the test error.
edgeprune info "$DEMO_DIR/base.pt"
