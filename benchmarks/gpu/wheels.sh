#!/usr/bin/env bash
# Downloads, on a machine with PyPI access, the wheels of the runtime packages that the GPU
# machine's image lacks (its Python has torch, numpy, pytest, hypothesis, xxhash,
# prometheus-client, pyyaml, tqdm, matplotlib, pybind11, scikit-build-core, cmake and ninja, but
# not rbloom or redis, which the engine imports), into .whl/ (ignored by git). run.sh installs
# them from there, offline, when the folder is carried along:
#
#   bash benchmarks/gpu/wheels.sh               # on a machine with PyPI access: ~0.9 MB into .whl/
#   bash benchmarks/gpu/run.sh                  # then on the GPU machine, .whl/ beside the checkout
#
# Environment: PY_VERSION (the GPU machine's Python, default 3.12).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY_VERSION="${PY_VERSION:-3.12}"
DEST="$ROOT/.whl"
mkdir -p "$DEST"
# rbloom: compiled (abi3); redis: pure Python, no requirement left on Python >= 3.11.3.
python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "rbloom>=1.5" "redis>=5.0"
ls -l "$DEST"
du -sh "$DEST"
