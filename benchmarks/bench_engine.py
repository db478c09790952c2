"""CacheEngine store / retrieve / check against the raw kernels and a contiguous copy.

The benchmark is ``lmcache_native.bench.engine`` (``--help`` lists its options)::

    python benchmarks/bench_engine.py --preset llama3-8b --tokens 8192
"""

from __future__ import annotations

import sys

from lmcache_native.bench.engine import main

if __name__ == "__main__":
    sys.exit(main())
