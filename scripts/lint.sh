#!/usr/bin/env bash
# Static checks CI enforces: ruff (lint + format), mypy --strict on the package and the admin API,
# clang-format on csrc/. Installs the pinned tools into .venv (scripts/install.sh makes it).
# Usage: scripts/lint.sh [--fix]   --fix applies ruff's and clang-format's rewrites instead.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LMC_VENV:-.venv}"
[ -x "$venv/bin/python" ] || bash scripts/install.sh test
"$venv/bin/pip" install -q "ruff==0.17.6" "mypy==2.4.1" "clang-format==23.1.5" "types-PyYAML"
mapfile -t cxx < <(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'tests/*.cpp')
status=0
if [ "${1:-}" = --fix ]; then
  "$venv/bin/ruff" check --fix .
  "$venv/bin/ruff" format .
  "$venv/bin/clang-format" -i "${cxx[@]}"
  exit 0
fi
echo "lint: ruff check" >&2
"$venv/bin/ruff" check . || status=1
echo "lint: ruff format --check" >&2
"$venv/bin/ruff" format --check . || status=1
echo "lint: mypy --strict python/lmcache_native api" >&2
"$venv/bin/mypy" python/lmcache_native api || status=1
echo "lint: clang-format --dry-run -Werror (${#cxx[@]} files)" >&2
"$venv/bin/clang-format" --dry-run -Werror "${cxx[@]}" || status=1
[ "$status" = 0 ] && echo "lint: all checks passed" >&2
exit "$status"
