"""The page-cache state of chunk files, for benchmarks that compare tier reads with raw reads.

A disk tier's read and a plain read of the same files only compare when both start from the
same page-cache state: ``cold`` (the files' pages dropped, so both read from the device) or
``warm`` (the pages cached, so both copy from memory).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path


def drop(paths: Sequence[Path]) -> None:
    """Writes back and drops the cached pages of ``paths``: the next read comes from the device.

    Pages still dirty cannot be dropped, hence the ``fsync`` first (cheap once written back).
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_seconds(paths: Sequence[Path], state: str = "warm") -> tuple[int, float]:
    """Bytes of ``paths`` and the seconds to read them one after another with ``read()``.

    With ``state="cold"`` their pages are dropped first (not timed).
    """
    if state == "cold":
        drop(paths)
    total = 0
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            total += len(f.read())
    return total, time.perf_counter() - t0
