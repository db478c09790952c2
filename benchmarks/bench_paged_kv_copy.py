"""paged_kv_gather / paged_kv_scatter against torch indexing and a contiguous copy.

The benchmark is ``lmcache_native.bench.paged_kv_copy`` (``--help`` lists its options)::

    python benchmarks/bench_paged_kv_copy.py --preset llama3-8b --tokens 1024,8192
"""

from __future__ import annotations

import sys

from lmcache_native.bench.paged_kv_copy import main

if __name__ == "__main__":
    sys.exit(main())
