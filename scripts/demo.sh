#!/usr/bin/env bash
# README's demo command: set everything up, then run edgeprune's main job on its default, stage by stage:
# LeNet-5 on Fashion-MNIST → SeReNe (LB) regularize ⇄ threshold → surgery → export → report → latency.
# Everything lands in runs/demo/ (override with DEMO_DIR=...). About 10 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DEMO_DIR=${DEMO_DIR:-runs/demo}
EPOCHS=${DEMO_EPOCHS:-8}
COMPRESS_EPOCHS=${DEMO_COMPRESS_EPOCHS:-10}
MINUTES=${DEMO_MINUTES:-10}
RUN="$DEMO_DIR/serene-lb"
mkdir -p "$DEMO_DIR"

# 1. Train the baseline LeNet-5 on the official Fashion-MNIST split (best epoch on 10 % validation kept).
if [ ! -f "$DEMO_DIR/base.pt" ]; then
  edgeprune train --arch lenet5 --dataset fashion-mnist --epochs "$EPOCHS" --out "$DEMO_DIR/base.pt"
fi

# 2. Its summary: neurons, parameters and MACs per layer, and the test error.
edgeprune info "$DEMO_DIR/base.pt"

# 3. SeReNe (LB): shrink insensitive neurons, threshold by bisection within TWT, pin, repeat until the validation
#    accuracy would drop more than 1 point or the budget is spent; then cut the dead neurons out (surgery), export
#    baseline and slim model (.onnx, .7z, .ptl, .ort, all validated) and write the report. A rerun reuses the run.
#    The budget is short for a demo (the 39x result in README took 42 epochs); PWE 1 thresholds at every plateau.
if [ ! -f "$RUN/report.json" ]; then
  if [ -f "$RUN/state.pt" ]; then
    edgeprune compress --resume "$RUN" --max-minutes "$MINUTES"
  else
    edgeprune compress "$DEMO_DIR/base.pt" --preset lenet5-fmnist --lambda 1e-4 --twt 0.5 --pwe 1 --lr 0.005 \
      --target-drop 0.01 --max-epochs "$COMPRESS_EPOCHS" --max-minutes "$MINUTES" --out "$RUN"
  fi
fi

# 4. Neurons per layer before → after surgery, and the paper-style table (SeReNe Table IV columns).
edgeprune info "$RUN/model.pt"
edgeprune report "$RUN"

# 5. Latency: 1,000 inferences of dense and slim on this CPU, alternating, with the speedup's 95 % interval.
edgeprune bench "$RUN" --runs 1000 --warmup 50
