"""The page-cache helpers of the TTFT benchmark's disk rows, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lmcache_native.bench import page_cache


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
