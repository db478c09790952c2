"""Layer-wise loads and saves of the vLLM connector against the whole-forward path, one run.

The benchmark is ``lmcache_native.bench.vllm_layerwise`` (``--help`` lists its options)::

    python benchmarks/bench_vllm_layerwise.py --tokens 4096 --layers 32 --dtype bfloat16
"""

from __future__ import annotations

import sys

from lmcache_native.bench.vllm_layerwise import main

if __name__ == "__main__":
    sys.exit(main())
