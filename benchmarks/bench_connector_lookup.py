"""The connector's lookup of a long prompt against a large index, beside the 2 ms budget.

The benchmark is ``lmcache_native.bench.connector_lookup`` (``--help`` lists its options)::

    python benchmarks/bench_connector_lookup.py --prompt-tokens 32768 --chunks 100000
"""

from __future__ import annotations

import sys

from lmcache_native.bench.connector_lookup import main

if __name__ == "__main__":
    sys.exit(main())
