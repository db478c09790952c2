"""``lmcache-native bench``: every benchmark in one run, one table, ``--json`` and a PNG plot.

Two ways to get the figures (see :mod:`lmcache_native.bench.runner`):

* ``scripts``: in a source checkout, run each ``benchmarks/bench_*.py`` as a subprocess with
  ``--json`` and read the rows back (the project's own benchmarks, with their baselines);
* ``builtin``: for an installed wheel (no ``benchmarks/`` folder), a minimal in-process set --
  paged KV copy, ``kv_chunk_md5`` and slot ranges, each with the same-run baseline and limit.

Either way every row carries our figure, the baseline, the limit and the ratios, in GB/s of
bytes read plus bytes written (bytes hashed for MD5).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``lmcache-native bench`` with ``argv`` (``sys.argv[1:]`` when ``None``)."""
    from lmcache_native.bench.runner import main as run_main

    return run_main(argv)
