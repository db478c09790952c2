#!/usr/bin/env bash
# GPU figures in one command, on a machine with an NVIDIA GPU, its driver, CUDA (nvcc) and a
# Python that has torch with CUDA:
#
#   bash benchmarks/gpu/run.sh            # build for this card, CUDA tests, CUDA benchmarks, table
#   QUICK=1 bash benchmarks/gpu/run.sh    # smaller sweep (about a minute of benchmarks)
#
# Environment: PYTHON (default: .venv/bin/python if it has torch with CUDA, else python3),
# LMC_CUDA_ARCHS (default: this card's compute capability), RESULTS (default
# benchmarks/out/gpu: one JSON per benchmark), DEADLINE_S (skip the benchmarks not yet started
# once this many seconds have passed, so the table still prints within a time limit; default none).
# Nothing is fetched from the network: the build runs with --no-build-isolation, so
# scikit-build-core, pybind11 and cmake must be installed (or in pip's cache) beforehand; wheels
# in .whl/ (benchmarks/gpu/wheels.sh) are installed offline into a scratch folder first.
# When OUT names a folder (where results are collected), the results, the summary table and
# the CUDA test log are packed into it: $OUT/gpu_results.tgz and $OUT/summary.txt.
# Exit status: non-zero when the build, a CUDA test or a benchmark failed (the table still prints).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
START=$(date +%s)
QUICK="${QUICK:-0}"
RESULTS="${RESULTS:-$ROOT/benchmarks/out/gpu}"
DEADLINE_S="${DEADLINE_S:-0}"
STATUS=0

step() { printf '\n=== %s (%ss)\n' "$*" "$(($(date +%s) - START))"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }
fail() { printf 'run.sh: FAILED: %s\n' "$*" >&2; STATUS=1; }

# --- environment checks -------------------------------------------------------------------------
step "checks"
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this script needs an NVIDIA GPU and its driver"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
  || die "nvidia-smi cannot query the GPU"

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x "$ROOT/.venv/bin/python" ] &&
     "$ROOT/.venv/bin/python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PYTHON="$ROOT/.venv/bin/python"
  fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: set PYTHON=/path/to/python (with torch + CUDA)"
"$PYTHON" - <<'PY' || die "$PYTHON has no torch with a usable CUDA device (set PYTHON=...)"
import sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
sys.exit(0 if torch.cuda.is_available() else 1)
PY

if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [ -x "$c" ]; then export CUDACXX="$c"; break; fi
  done
fi
NVCC="${CUDACXX:-$(command -v nvcc || true)}"
[ -n "$NVCC" ] || die "nvcc not found: install the CUDA toolkit or set CUDACXX=/path/to/nvcc"
"$NVCC" --version | tail -n 2

missing=$("$PYTHON" - <<'PY'
import importlib.util
need = {"scikit_build_core": "scikit-build-core", "pybind11": "pybind11", "pytest": "pytest"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  # Offline install of the carried wheels (no index, no dependency resolution).
  SITE="${TMPDIR:-/tmp}/lmc-gpu-site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
    "$ROOT"/.whl/*.whl || die "installing the wheels in .whl/ failed"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed from .whl/: $(cd "$ROOT/.whl" && ls -- *.whl | tr '\n' ' ')"
fi
if [ -n "$missing" ]; then
  echo "installing from pip's cache (no network is assumed): $missing"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q $missing || die "missing Python packages: $missing (pip install them first)"
fi
if ! command -v cmake >/dev/null 2>&1 && ! "$PYTHON" -c 'import cmake' 2>/dev/null; then
  die "cmake (>= 3.18) not found: install it (apt install cmake, or pip install cmake)"
fi

if [ -z "${LMC_CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
  if [[ "$cap" =~ ^[0-9]+$ ]]; then LMC_CUDA_ARCHS="$cap"; else LMC_CUDA_ARCHS=native; fi
fi
echo "LMC_CUDA_ARCHS=$LMC_CUDA_ARCHS"

# --- build --------------------------------------------------------------------------------------
step "build (LMC_CUDA=ON, archs $LMC_CUDA_ARCHS)"
# NOTE: a build folder of its own, so a CPU-only build tree of the same checkout is not reused.
LMC_CUDA=ON LMC_CUDA_ARCHS="$LMC_CUDA_ARCHS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$PYTHON" -m pip install -q --no-build-isolation --no-deps \
  -C build-dir="build/gpu-{wheel_tag}" -e . || die "build failed (see the compiler output above)"
"$PYTHON" - <<'PY' || die "the installed lmcache_native has no CUDA kernels"
import sys
import lmcache_native
print(f"lmcache_native {lmcache_native.__version__}, HAS_CUDA={lmcache_native.HAS_CUDA}")
sys.exit(0 if lmcache_native.HAS_CUDA else 1)
PY

# --- CUDA tests ---------------------------------------------------------------------------------
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS"/*.log
TESTS=(tests/kernels)
# The engine's CUDA tests need the engine's imports (rbloom, redis: see wheels.sh).
if "$PYTHON" -c 'import lmcache_native.engine' 2>/dev/null; then
  TESTS+=(tests/engine/test_cuda_engine.py)
else
  echo "skipping tests/engine/test_cuda_engine.py: lmcache_native.engine does not import here" \
    "(carry the wheels of benchmarks/gpu/wheels.sh in .whl/)"
fi
step "CUDA tests: pytest -m cuda ${TESTS[*]}"
set +e
"$PYTHON" -m pytest -m cuda "${TESTS[@]}" -q -p no:cacheprovider 2>&1 | tee "$RESULTS/cuda_tests.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || fail "CUDA tests"

# --- benchmarks ---------------------------------------------------------------------------------
bench() {  # bench <json name> <script> [args...]
  local name="$1" script="$2"
  shift 2
  local elapsed=$(($(date +%s) - START))
  if [ "$DEADLINE_S" -gt 0 ] && [ "$elapsed" -ge "$DEADLINE_S" ]; then
    printf '\nrun.sh: SKIPPED benchmark %s: %ss passed, DEADLINE_S=%s\n' "$name" "$elapsed" "$DEADLINE_S" >&2
    SKIPPED="${SKIPPED:-}$name "
    return 0
  fi
  step "benchmark $name: $script $*"
  "$PYTHON" "$script" --device cuda --json "$RESULTS/$name.json" "$@" || fail "benchmark $name"
}

if [ "$QUICK" = 1 ]; then
  TOKENS=1024,8192; SWEEP_BLOCKS=16,1024
else
  TOKENS=1024,8192,32768; SWEEP_BLOCKS=2,16,128,1024,8192
fi
COPY=benchmarks/bench_paged_kv_copy.py
MD5=benchmarks/bench_kv_chunk_md5.py
# Most wanted first, so that DEADLINE_S cuts the least important ones.
if [ -f "$COPY" ]; then
  # Chunk in pinned host memory (the store/load path), both directions and both at once.
  bench copy_host "$COPY" --preset llama3-8b --layouts flash_attn,flashinfer,hnd \
    --tokens "$TOKENS" --directions gather,scatter,both --chunk-on host
fi
[ -f "$MD5" ] && bench kv_chunk_md5 "$MD5"
if [ -f "$COPY" ]; then
  # Segment sweep: one block of llama3-8b is block_size * 2 KiB (block 2 = 4 KiB ... 8192 = 16 MiB).
  bench copy_sweep "$COPY" --preset llama3-8b --layouts flash_attn --tokens 16384 \
    --block-sizes "$SWEEP_BLOCKS" --directions gather,scatter --chunk-on host
  # Under a concurrent bf16 matmul load on another stream.
  bench copy_matmul "$COPY" --preset llama3-8b --layouts flash_attn --tokens 8192 \
    --directions gather,scatter --chunk-on host --matmul-load
  # Chunk in device memory (device-to-device copies).
  bench copy_device "$COPY" --preset llama3-8b --layouts flash_attn --tokens "$TOKENS" \
    --chunk-on device
  bench copy_mla "$COPY" --preset deepseek-v3-mla --layouts mla --tokens 8192 --chunk-on host
fi
# Every other benchmark that has a CUDA mode (slot_ranges, engine, ...), with its defaults.
for script in benchmarks/bench_*.py; do
  [ "$script" = "$COPY" ] || [ "$script" = "$MD5" ] && continue
  if "$PYTHON" "$script" --help 2>/dev/null | grep -q -- 'cuda'; then
    bench "$(basename "$script" .py | sed 's/^bench_//')" "$script"
  else
    echo "skipping $script: no --device cuda mode (or it does not import here)"
  fi
done

# --- one table ----------------------------------------------------------------------------------
step "summary"
"$PYTHON" benchmarks/gpu/summarize.py "$RESULTS" | tee "$RESULTS/summary.txt" || fail "summary"
[ -z "${SKIPPED:-}" ] || echo "run.sh: skipped for DEADLINE_S: ${SKIPPED}" | tee -a "$RESULTS/summary.txt" >&2
printf '\nresults: %s (JSON per benchmark); total %ss\n' "$RESULTS" "$(($(date +%s) - START))"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  # Results are collected from $OUT as few files: one archive and the table.
  tar -czf "$OUT/gpu_results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  cp "$RESULTS/summary.txt" "$OUT/summary.txt"
  echo "packed into $OUT: gpu_results.tgz, summary.txt"
fi
[ "$STATUS" = 0 ] || echo "run.sh: some steps FAILED (see above)" >&2
exit "$STATUS"
