#!/usr/bin/env bash
# README's test command: set everything up (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export EDGEPRUNE_PROGRESS=0
exec .venv/bin/python -m pytest -q "$@"
