"""The connector's save path over a long chunked prefill: whole-prefix saves against incremental.

The benchmark is ``lmcache_native.bench.connector_save`` (``--help`` lists its options)::

    python benchmarks/bench_connector_save.py --prompt-tokens 16384 --step 512
"""

from __future__ import annotations

import sys

from lmcache_native.bench.connector_save import main

if __name__ == "__main__":
    sys.exit(main())
