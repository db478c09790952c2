"""The benchmarks of ``lmcache_native``, each implemented once, here.

* :mod:`~lmcache_native.bench.paged_kv_copy`: ``paged_kv_gather`` / ``paged_kv_scatter``
  against torch indexing and a contiguous copy (CUDA: also ``cudaMemcpyAsync``);
* :mod:`~lmcache_native.bench.kv_chunk_md5`: ``kv_chunk_md5`` against single-thread
  ``hashlib``, ``xxh3`` and a contiguous copy;
* :mod:`~lmcache_native.bench.slot_ranges`: slot-string parse + compress against the
  pure-Python reference and a contiguous copy of the bytes it moves;
* :mod:`~lmcache_native.bench.engine`: ``CacheEngine`` store / retrieve / check against the
  raw kernels and a contiguous copy;
* :mod:`~lmcache_native.bench.runner`: ``lmcache-native bench``, all of them in one run and
  one table (``--json``, ``--plot``).

Each module has a ``main(argv)`` (``benchmarks/bench_<name>.py`` calls it) and a
``combined_row`` that turns its rows into rows of the combined table
(:mod:`~lmcache_native.bench.rows`). Presets, the timer and the units live in
:mod:`~lmcache_native.bench._util`, the table formatter and the plot in
:mod:`~lmcache_native.bench.report`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``lmcache-native bench`` with ``argv`` (``sys.argv[1:]`` when ``None``)."""
    from lmcache_native.bench.runner import main as run_main

    return run_main(argv)
