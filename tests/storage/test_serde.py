"""The chunk format: round trip, and every kind of damage is a CorruptChunkError."""

from __future__ import annotations

import struct

import pytest
import torch
import xxhash
from lmcache_native.errors import CorruptChunkError
from lmcache_native.storage import serde

from tests.storage.conftest import CHUNK_SHAPE, key_of, random_bits, same_bytes


@pytest.fixture
def blob() -> bytes:
    return serde.encode(key_of(1), random_bits(CHUNK_SHAPE, torch.bfloat16, 1))


def test_round_trip(pool, blob: bytes) -> None:
    buf = serde.decode(blob, key_of(1), pool.allocate)
    assert buf is not None
    assert same_bytes(buf.tensor, random_bits(CHUNK_SHAPE, torch.bfloat16, 1))
    h = serde.parse_header(blob)
    assert h.key == key_of(1)
    assert h.dtype == torch.bfloat16
    assert h.shape == CHUNK_SHAPE
    assert h.payload_len == 2 * 2 * 16 * 32 * 2
    assert h.total_len == len(blob)
    assert blob[:4] == serde.MAGIC
    assert struct.unpack_from("<H", blob, 4)[0] == serde.FORMAT_VERSION
    assert h.payload_checksum == xxhash.xxh3_64_intdigest(blob[h.header_len :])
    buf.unref()


def test_every_flipped_header_byte_is_detected(pool, blob: bytes) -> None:
    header_len = serde.parse_header(blob).header_len
    for pos in range(header_len):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(CorruptChunkError):
            serde.decode(bytes(bad), key_of(1), pool.allocate)
    assert pool.used_bytes == 0  # nothing allocated for rejected chunks


@pytest.mark.parametrize("where", [0, 1, 1000, -1])
def test_flipped_payload_byte_is_detected(pool, blob: bytes, where: int) -> None:
    header_len = serde.parse_header(blob).header_len
    bad = bytearray(blob)
    bad[header_len + where if where >= 0 else where] ^= 0x80
    with pytest.raises(CorruptChunkError, match="payload checksum"):
        serde.decode(bytes(bad), key_of(1), pool.allocate)


def test_truncated_and_extended(pool, blob: bytes) -> None:
    for bad in (blob[:-1], blob[:10], blob[:0], blob + b"\0"):
        with pytest.raises(CorruptChunkError):
            serde.decode(bad, key_of(1), pool.allocate)


def test_other_key_is_detected(pool, blob: bytes) -> None:
    with pytest.raises(CorruptChunkError, match="another key"):
        serde.decode(blob, key_of(2), pool.allocate)


def test_unknown_version_is_rejected(pool) -> None:
    t = random_bits((2, 1, 2, 4), torch.float32, 0)
    blob = bytearray(serde.encode("k", t))
    struct.pack_into("<H", blob, 4, serde.FORMAT_VERSION + 1)
    with pytest.raises(CorruptChunkError, match="version"):
        serde.decode(bytes(blob), "k", pool.allocate)


def test_file_round_trip_and_atomic_write(tmp_path, pool) -> None:
    t = random_bits(CHUNK_SHAPE, torch.float16, 4)
    path = tmp_path / serde.chunk_filename(key_of(4))
    n = serde.write_chunk_file(path, key_of(4), t)
    assert n == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    buf, header = serde.read_chunk_file(path, key_of(4), pool.allocate)
    assert buf is not None
    assert header.key == key_of(4)
    assert same_bytes(buf.tensor, t)
    buf.unref()


def test_chunk_filename_quotes_and_bounds() -> None:
    name = serde.chunk_filename("meta-llama/Llama-3@1@0@ab@bfloat16")
    assert "/" not in name
    assert name.endswith(serde.CHUNK_SUFFIX)
    long_name = serde.chunk_filename("m" * 500 + "@1@0@ab@bfloat16")
    assert len(long_name) < 100
    assert long_name.startswith("h-")
