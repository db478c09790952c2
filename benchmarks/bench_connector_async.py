"""What the connector's loads and saves cost vLLM's forward thread, sync against async.

The benchmark is ``lmcache_native.bench.connector_async`` (``--help`` lists its options)::

    python benchmarks/bench_connector_async.py --tokens 4096 --layers 16 --heads 8 \
        --head-size 128 --repeat 7
"""

from __future__ import annotations

import sys

from lmcache_native.bench.connector_async import main

if __name__ == "__main__":
    sys.exit(main())
