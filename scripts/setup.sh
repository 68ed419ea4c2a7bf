#!/usr/bin/env bash
# Idempotent set-up: system packages (when root), a virtual env in .venv, edgeprune installed editable with dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

apt_install() {
  # Install Debian packages that are missing; only possible as root with apt.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "missing system packages: ${missing[*]} (not root: install them yourself; related tests will be skipped)"
    return 0
  fi
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f /var/lib/apt/.edgeprune-updated ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
    apt-get update -qq && touch /var/lib/apt/.edgeprune-updated
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

apt_install dataset-fashion-mnist ${EDGEPRUNE_EXTRA_APT:-adb qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross p7zip-full}
# The runner build fetches ONNX Runtime's C headers once with `npm pack` (many images ship npm; Debian has it too).
command -v npm >/dev/null || apt_install npm

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.edgeprune-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing edgeprune and its dependencies into .venv (first time: several minutes, torch is large)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
log "ready: $(.venv/bin/python -c 'import torch, edgeprune; print("torch", torch.__version__, "edgeprune", edgeprune.__version__)')"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then bash scripts/fetch_adbd.sh .cache/adbd || log "could not fetch Debian trixie's adbd into .cache/adbd (tests/test_real_adbd.py will skip)"; fi
