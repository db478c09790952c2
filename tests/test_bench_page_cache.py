"""The TTFT benchmark's disk rows: page-cache states of real files, and overlapping load times."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lmcache_native.bench import page_cache
from lmcache_native.bench._util import busy_seconds


def _files(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for i, n in enumerate(sizes):
        path = tmp_path / f"c{i}.chunk"
        path.write_bytes(os.urandom(n))  # dirty pages: drop must write them back first
        paths.append(path)
    return paths


@pytest.mark.parametrize("state", ["cold", "warm"])
def test_read_seconds_reads_every_byte_from_either_state(tmp_path: Path, state: str) -> None:
    paths = _files(tmp_path, [1 << 20, 4096, 3])
    before = [p.read_bytes() for p in paths]
    total, seconds = page_cache.read_seconds(paths, state)
    assert total == (1 << 20) + 4096 + 3
    assert seconds > 0
    assert [p.read_bytes() for p in paths] == before  # dropping pages loses no data


def test_drop_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        page_cache.drop([tmp_path / "gone.chunk"])


@pytest.mark.parametrize(
    ("intervals", "busy"),
    [
        ([], 0.0),
        ([(0.0, 2.0)], 2.0),
        ([(0.0, 2.0), (3.0, 4.0)], 3.0),  # serial loads: the sum
        ([(0.0, 2.0), (1.0, 3.0), (1.5, 2.5)], 3.0),  # overlapping loads: counted once
        ([(5.0, 6.0), (0.0, 10.0)], 10.0),  # one inside another, any order
    ],
)
def test_busy_seconds_counts_overlapping_loads_once(
    intervals: list[tuple[float, float]], busy: float
) -> None:
    assert busy_seconds(intervals) == pytest.approx(busy)
