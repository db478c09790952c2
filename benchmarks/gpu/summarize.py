"""Prints the JSON results of ``benchmarks/gpu/run.sh`` (one file per benchmark) as one table.

Usage: ``python benchmarks/gpu/summarize.py benchmarks/out/gpu``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmcache_native.bench.report import format_table

# Columns shown first when present; any other scalar field follows in first-seen order.
_FIRST = ["bench", "layout", "dir", "tokens", "block", "MB"]
_SKIP = {"preset", "limit", "ours_ms"}


def load_rows(folder: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    """All rows of every ``*.json`` in ``folder``, tagged with the file's name; and a machine."""
    rows: list[dict[str, object]] = []
    machine: dict[str, object] = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        machine = machine or data.get("machine", {})
        for row in data.get("rows", []):
            flat = {
                k: v for k, v in row.items() if k not in _SKIP and not isinstance(v, dict | list)
            }
            rows.append({"bench": path.stem, **flat})
    return rows, machine


def main(argv: list[str]) -> int:
    """Prints the table of the folder ``argv[0]``; returns the exit code."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows, machine = load_rows(Path(argv[0]))
    if not rows:
        print(f"no benchmark results in {argv[0]}", file=sys.stderr)
        return 1
    columns = [c for c in _FIRST if any(c in r for r in rows)]
    for r in rows:
        columns += [k for k in r if k not in columns]
    gpu = machine.get("gpu", "?")
    print(
        f"GPU: {gpu}; CPU: {machine.get('cpu', '?')}; torch {machine.get('torch', '?')}; "
        f"commit {str(machine.get('commit', '?'))[:12]}"
    )
    print("GB/s count bytes read + written; ratios against the same-run baseline/limit/memcpy.")
    print(format_table(rows, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
