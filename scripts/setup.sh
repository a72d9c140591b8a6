#!/usr/bin/env bash
# Idempotent set-up: .venv/ with the CPU torch pinned first, then xopd with its test + demo extras,
# then espeak-ng + sox from apt when we are root and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PIN="${XOPD_TORCH_PIN:-torch==2.13.0}"
PY="${PYTHON:-python3}"
STAMP=.venv/.xopd-installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and alone: with no torch present an unpinned requirement would pull a CUDA build.
  .venv/bin/python -m pip install -q "$TORCH_PIN"
  # repeat the pin on the same line so the resolver cannot swap torch.
  .venv/bin/python -m pip install -q "$TORCH_PIN" -e ".[test,demo]"
  echo "$want" > "$STAMP"
fi
if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null
  else
    echo "warning: espeak-ng/sox missing and not root: install them to synthesise speech" >&2
  fi
fi
