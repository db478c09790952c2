"""kv_chunk_md5 against single-thread hashlib, xxh3 and a contiguous copy.

The benchmark is ``lmcache_native.bench.kv_chunk_md5`` (``--help`` lists its options)::

    python benchmarks/bench_kv_chunk_md5.py --preset llama3-8b --tokens 8k --isa all
"""

from __future__ import annotations

import sys

from lmcache_native.bench.kv_chunk_md5 import main

if __name__ == "__main__":
    sys.exit(main())
