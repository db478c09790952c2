"""Slot-string parse + compress against the pure-Python parser and a contiguous copy.

The benchmark is ``lmcache_native.bench.slot_ranges`` (``--help`` lists its options)::

    python benchmarks/bench_slot_ranges.py --slots 1000000
"""

from __future__ import annotations

import sys

from lmcache_native.bench.slot_ranges import main

if __name__ == "__main__":
    sys.exit(main())
