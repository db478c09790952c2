#!/usr/bin/env bash
# Sanitizer job: builds the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option LMC_SANITIZE, build tree build/sanitize, venv .venv-san) and runs tests/kernels
# and tests/engine under them, then stress-tests the thread pool under ThreadSanitizer.
# Every sanitizer report aborts the process (pytest would hide a passing test's stderr), so the
# script exits non-zero on the first report, on a failing test and on a hang (timeouts).
# Usage: scripts/sanitize.sh [PYTEST_ARGS...]   (extra arguments go to both pytest runs)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
venv=.venv-san
build=build/sanitize
mkdir -p "$build"
log() { printf '\n== sanitize.sh: %s\n' "$*"; }

log "venv $venv and the ASan+UBSan build in $build"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q)
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" "scikit-build-core>=0.10" "pybind11>=2.12" ninja
# NOTE: RelWithDebInfo keeps symbols and line numbers (pybind11 strips Release modules);
# LMC_SANITIZE adds -O1 -g after the usual flags.
LMC_CUDA=OFF "${pip[@]}" --no-build-isolation -C build-dir="$build" \
  -C cmake.build-type=RelWithDebInfo -C cmake.define.LMC_SANITIZE=ON ".[test]"
so="$(echo "$venv"/lib/python3*/site-packages/lmcache_native/_C*.so)"
# NOTE: not `ldd | grep -q`: grep exits at the first match, ldd may then die of SIGPIPE, and
# pipefail turns that into a failed check.
if ! grep -q libasan <<<"$(ldd "$so")"; then
  echo "sanitize.sh: $so is not an ASan build" >&2
  exit 1
fi

# Python and torch are not instrumented, so the ASan runtime must be loaded first (LD_PRELOAD);
# UBSan's handlers come with it. libstdc++ is preloaded too: python does not link it, and ASan
# resolves its __cxa_throw interceptor at start-up (otherwise the first C++ exception, e.g. a
# ValueError raised by a kernel, dies in "CHECK failed: real___cxa_throw != 0").
# detect_leaks=0: CPython leaks its interned objects by design. Child processes (a test's
# `python -c`, redis-server) inherit the preload and the options.
asan_env=(
  "LD_PRELOAD=$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
  "ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=0"
  "UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1"
)
summary=()
run_pytest() {
  local what="$1"
  shift
  log "pytest $what under ASan+UBSan"
  local out="$build/pytest-${what//\//_}.log" rc
  set +e
  # NOTE: --capture=sys leaves fd 2 alone, so a report printed just before the abort is not
  # lost with pytest's captured output.
  env "${asan_env[@]}" timeout -k 30 1500 "$venv/bin/python" -m pytest "$what" \
    -p no:cacheprovider --capture=sys --timeout=300 -q "$@" 2>&1 | tee "$out"
  rc="${PIPESTATUS[0]}"
  set -e
  summary+=("$what: $(grep -E '[0-9]+ (passed|failed|error)' "$out" | tail -1 | tr -d '=' || true)")
  if [ "$rc" != 0 ]; then
    echo "sanitize.sh: pytest $what failed (exit $rc; 124 = timed out, 134 = a sanitizer report)" >&2
    grep -E 'ERROR: AddressSanitizer|runtime error:|Sanitizer: CHECK failed' "$out" >&2 || true
    exit 1
  fi
}
run_pytest tests/kernels "$@"
run_pytest tests/engine "$@"

log "thread pool stress test under ThreadSanitizer"
g++ -std=c++17 -O1 -g -fsanitize=thread -fno-omit-frame-pointer -Icsrc -pthread \
  tests/sanitize/thread_pool_stress.cpp csrc/common/thread_pool.cpp -o "$build/thread_pool_tsan"
TSAN_OPTIONS=halt_on_error=1:abort_on_error=1:second_deadlock_stack=1 \
  timeout 600 "$build/thread_pool_tsan" 1000 | tee "$build/thread_pool_tsan.log"
summary+=("thread pool (TSan): $(tail -1 "$build/thread_pool_tsan.log")")

log "summary"
printf '  %s\n' "${summary[@]}"
echo "  sanitizer reports: 0 (ASan, UBSan and TSan abort on the first one)"
echo "  time: $((SECONDS - t0)) s"
