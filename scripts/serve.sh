#!/usr/bin/env bash
# Installs lmcache-native and runs the main job: the standalone admin server with an embedded
# engine on http://127.0.0.1:7000. Extra arguments go to `lmcache-native serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/lmcache-native serve "$@"
