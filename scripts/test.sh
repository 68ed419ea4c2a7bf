#!/usr/bin/env bash
# README's test command: set everything up (idempotent), then run the whole test suite.
#
# The suite never touches the real home (tests/conftest.py points HOME, XDG_* and ANDROID_* at a fresh folder).
# The one thing shared between runs is the ort-c runner bundle cache, named explicitly: the checkout's
# .cache/runner (built by the suite on first use from the package registries, then reused).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export EDGEPRUNE_PROGRESS=0
export EDGEPRUNE_RUNNER_CACHE="${EDGEPRUNE_RUNNER_CACHE:-$PWD/.cache/runner}"
# pyproject's addopts carry -ra: every skip is listed with its reason in the closing summary.
exec .venv/bin/python -m pytest -q "$@"
