#!/usr/bin/env bash
# Installs lmcache-native into ./.venv from scratch: torch from the local CPU wheel (any torch
# >= 2.1 works; the extension never links libtorch), then the package and its extras.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${LMC_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q "torch==2.13.0"
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$venv/bin/pip" install -q "$spec"
