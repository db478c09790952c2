"""Every benchmark in one run and one table: the same as ``lmcache-native bench``.

The runner is ``lmcache_native.bench.runner`` (``--help`` lists its options)::

    python benchmarks/run_all.py                          # llama3-8b, 1K/8K tokens, blocks 16/32
    python benchmarks/run_all.py --quick --json /tmp/all.json --plot /tmp/all.png
"""

from __future__ import annotations

import sys

from lmcache_native.bench.runner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python benchmarks/run_all.py"))
