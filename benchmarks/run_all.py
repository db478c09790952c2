"""Runs every benchmark of this folder and prints one table; same as ``lmcache-native bench``.

The runner lives in the package (``lmcache_native.bench.runner``) so that an installed wheel can
run ``lmcache-native bench`` too; from a checkout it runs the ``bench_*.py`` scripts here as
subprocesses with ``--json`` and reads their rows back.

Examples::

    python benchmarks/run_all.py                          # llama3-8b, 1K/8K tokens, blocks 16/32
    python benchmarks/run_all.py --quick --json /tmp/all.json --plot /tmp/all.png
    python benchmarks/run_all.py --json benchmarks/out/all.json --plot benchmarks/plot_cpu.png
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmcache_native.bench.runner import main

if __name__ == "__main__":
    # The scripts next to this file, unless --bench-dir or $LMC_BENCH_DIR says otherwise.
    os.environ.setdefault("LMC_BENCH_DIR", str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:], prog="python benchmarks/run_all.py"))
