"""The on-disk / on-the-wire chunk format: a versioned, checksummed header, then the payload.

Layout (little-endian)::

    fixed  magic "LMCN" | u16 version | u16 flags | u32 header_len | u64 payload_len
           | u64 xxh3_64(payload) | u64 xxh3_64(header with this field zeroed)
    var    u8 len + dtype name | u8 ndim + ndim * u64 shape | u16 len + key (UTF-8)
    payload  the chunk tensor's raw bytes, C order

Every chunk that leaves memory (disk file, ``fs://`` file, Redis value) is in this format. A
read verifies the header checksum, magic, version, the key it was asked for, dtype/shape against
the payload length, the total length, and the payload checksum; any mismatch raises
:class:`~lmcache_native.errors.CorruptChunkError`, which tiers turn into a miss plus a deleted
entry and a counted checksum failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import numpy as np
import torch
import xxhash

from lmcache_native.errors import CorruptChunkError
from lmcache_native.storage.base import Allocator, ChunkBufferLike

MAGIC = b"LMCN"
FORMAT_VERSION = 1
CHUNK_SUFFIX = ".chunk"
TMP_MARKER = ".tmp."
MAX_HEADER_LEN = 1 << 16
MAX_KEY_LEN = 4096

_FIXED = struct.Struct("<4sHHIQQQ")
FIXED_LEN = _FIXED.size
_HDR_SUM_OFFSET = FIXED_LEN - 8

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        getattr(torch, "float8_e4m3fn", None),
        getattr(torch, "float8_e5m2", None),
        getattr(torch, "float8_e4m3fnuz", None),
        getattr(torch, "float8_e5m2fnuz", None),
    )
    if d is not None
}


@dataclass(frozen=True)
class ChunkHeader:
    """A parsed chunk header.

    Attributes:
        key: the chunk key string the payload belongs to.
        dtype: element dtype of the payload.
        shape: tensor shape of the payload.
        payload_len: payload bytes.
        payload_checksum: xxh3_64 of the payload.
        header_len: bytes of the whole header (the payload starts here).
    """

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    payload_len: int
    payload_checksum: int
    header_len: int

    @property
    def total_len(self) -> int:
        """Header plus payload bytes."""
        return self.header_len + self.payload_len


def payload_view(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous host tensor, without a copy.

    Raises:
        ValueError: the tensor is not contiguous or not on the CPU.
    """
    if tensor.device.type != "cpu":
        raise ValueError(f"tensor must be on the CPU, got {tensor.device}")
    if not tensor.is_contiguous():
        raise ValueError("tensor must be contiguous")
    if tensor.numel() == 0:
        return memoryview(b"")
    return tensor.reshape(-1).view(torch.uint8).numpy().data


def encode_header(key: str, tensor: torch.Tensor, payload: memoryview | None = None) -> bytes:
    """The header for ``tensor`` stored under ``key``.

    Args:
        key: the chunk key string.
        tensor: contiguous host tensor (the payload).
        payload: ``payload_view(tensor)`` if the caller already has it.
    """
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported chunk dtype {tensor.dtype}")
    kb = key.encode("utf-8")
    if len(kb) > MAX_KEY_LEN:
        raise ValueError(f"key longer than {MAX_KEY_LEN} bytes")
    if payload is None:
        payload = payload_view(tensor)
    nb = name.encode()
    var = b"".join(
        [
            struct.pack("<B", len(nb)),
            nb,
            struct.pack(f"<B{tensor.dim()}Q", tensor.dim(), *tensor.shape),
            struct.pack("<H", len(kb)),
            kb,
        ]
    )
    header_len = FIXED_LEN + len(var)
    fixed = _FIXED.pack(
        MAGIC, FORMAT_VERSION, 0, header_len, payload.nbytes, xxhash.xxh3_64_intdigest(payload), 0
    )
    hsum = xxhash.xxh3_64_intdigest(fixed + var)
    return fixed[:_HDR_SUM_OFFSET] + struct.pack("<Q", hsum) + var


def header_len_of(prefix: bytes | memoryview) -> int:
    """Checks the fixed part (magic, version, bounds) and returns the whole header's length."""
    if len(prefix) < FIXED_LEN:
        raise CorruptChunkError("chunk shorter than its fixed header")
    magic, version, _flags, header_len, _pl, _ps, _hs = _FIXED.unpack_from(prefix, 0)
    if magic != MAGIC:
        raise CorruptChunkError("bad magic")
    if version != FORMAT_VERSION:
        raise CorruptChunkError(f"unsupported format version {version}")
    if not FIXED_LEN < header_len <= MAX_HEADER_LEN:
        raise CorruptChunkError(f"bad header length {header_len}")
    return int(header_len)


def parse_header(data: bytes | memoryview, expected_key: str | None = None) -> ChunkHeader:
    """Parses and verifies a header.

    Args:
        data: at least the whole header (the payload may follow).
        expected_key: the key the caller asked for; a header naming another key is corrupt.

    Raises:
        CorruptChunkError: any mismatch.
    """
    mv = memoryview(data)
    header_len = header_len_of(mv)
    if len(mv) < header_len:
        raise CorruptChunkError("chunk shorter than its header")
    _m, _v, _f, _hl, payload_len, payload_sum, header_sum = _FIXED.unpack_from(mv, 0)
    zeroed = bytes(mv[:_HDR_SUM_OFFSET]) + b"\0" * 8 + bytes(mv[FIXED_LEN:header_len])
    if xxhash.xxh3_64_intdigest(zeroed) != header_sum:
        raise CorruptChunkError("header checksum mismatch")
    try:
        off = FIXED_LEN
        (nlen,) = struct.unpack_from("<B", mv, off)
        off += 1
        name = bytes(mv[off : off + nlen]).decode("ascii")
        off += nlen
        (ndim,) = struct.unpack_from("<B", mv, off)
        off += 1
        shape = tuple(struct.unpack_from(f"<{ndim}Q", mv, off))
        off += 8 * ndim
        (klen,) = struct.unpack_from("<H", mv, off)
        off += 2
        key = bytes(mv[off : off + klen]).decode("utf-8")
        off += klen
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptChunkError(f"malformed header: {exc}") from None
    if off != header_len:
        raise CorruptChunkError("header length does not match its fields")
    dtype = _DTYPES.get(name)
    if dtype is None:
        raise CorruptChunkError(f"unknown dtype {name!r}")
    elem = torch.empty((), dtype=dtype).element_size()
    if math.prod(shape) * elem != payload_len:
        raise CorruptChunkError("shape and dtype do not match the payload length")
    if expected_key is not None and key != expected_key:
        raise CorruptChunkError("chunk belongs to another key")
    return ChunkHeader(key, dtype, shape, payload_len, payload_sum, header_len)


def verify_payload(header: ChunkHeader, payload: bytes | memoryview | np.ndarray) -> None:
    """Raises CorruptChunkError when the payload's length or xxh3_64 does not match."""
    mv = payload.data if isinstance(payload, np.ndarray) else memoryview(payload)
    if mv.nbytes != header.payload_len:
        raise CorruptChunkError("payload length mismatch")
    if xxhash.xxh3_64_intdigest(mv) != header.payload_checksum:
        raise CorruptChunkError("payload checksum mismatch")


def encode(key: str, tensor: torch.Tensor) -> bytes:
    """Header plus payload as one ``bytes`` (for stores that take a single value)."""
    pv = payload_view(tensor)
    return b"".join([encode_header(key, tensor, pv), pv])


def decode(
    data: bytes | memoryview, expected_key: str | None, allocator: Allocator
) -> ChunkBufferLike | None:
    """Verifies ``data`` and copies its payload into a new buffer.

    Returns:
        The buffer (one reference, the caller's), or ``None`` when the allocator has no room.

    Raises:
        CorruptChunkError: any header, length or checksum mismatch.
    """
    mv = memoryview(data)
    header = parse_header(mv, expected_key)
    if len(mv) != header.total_len:
        raise CorruptChunkError("total length mismatch")
    payload = mv[header.header_len :]
    verify_payload(header, payload)
    buf = allocator(header.shape, header.dtype)
    if buf is None:
        return None
    if header.payload_len:
        buf.byte_view()[:] = np.frombuffer(payload, dtype=np.uint8)
    return buf


# -- files ---------------------------------------------------------------------------------------


def chunk_filename(key: str) -> str:
    """File name of a chunk: the key, percent-quoted, or a hash for very long keys."""
    q = quote(key, safe="@.-_")
    if len(q) > 200:
        q = "h-" + xxhash.xxh3_128_hexdigest(key.encode("utf-8"))
    return q + CHUNK_SUFFIX


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is an unfinished write (left behind by a crash)."""
    return name.startswith(".") and TMP_MARKER in name


def write_chunk_file(
    path: Path, key: str, tensor: torch.Tensor, fsync: bool = False, header: bytes | None = None
) -> int:
    """Writes a chunk atomically: a temporary file in the same directory, then rename.

    A reader sees either no file or the complete file, also after a crash mid-write.

    Args:
        path: the final file path.
        key: the chunk key string.
        tensor: contiguous host tensor (the payload).
        fsync: fsync the file before the rename.
        header: ``encode_header(key, tensor)`` if the caller already has it.

    Returns:
        Bytes written (header plus payload).
    """
    pv = payload_view(tensor)
    if header is None:
        header = encode_header(key, tensor, pv)
    tmp = path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb", buffering=0) as f:
            f.write(header)
            view = pv
            while view.nbytes:
                n = f.write(view)
                view = view[n:]
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return len(header) + pv.nbytes


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise CorruptChunkError("chunk file truncated")
    return bytes(data)


def read_chunk_header_file(path: Path, expected_key: str | None = None) -> ChunkHeader:
    """Parses a chunk file's header and checks the file's length (not the payload checksum).

    Raises:
        CorruptChunkError: bad header or wrong file length.
        OSError: the file cannot be read (``FileNotFoundError`` when it is gone).
    """
    with open(path, "rb", buffering=0) as f:
        return _read_header(f, expected_key)


def _read_header(f: BinaryIO, expected_key: str | None) -> ChunkHeader:
    prefix = _read_exact(f, FIXED_LEN)
    header_len = header_len_of(prefix)
    header = parse_header(prefix + _read_exact(f, header_len - FIXED_LEN), expected_key)
    if os.fstat(f.fileno()).st_size != header.total_len:
        raise CorruptChunkError("chunk file length does not match its header")
    return header


def read_chunk_file(
    path: Path, expected_key: str | None, allocator: Allocator
) -> tuple[ChunkBufferLike | None, ChunkHeader]:
    """Reads and fully verifies a chunk file straight into a new buffer.

    Returns:
        ``(buffer, header)``; the buffer (one reference, the caller's) is ``None`` when the
        allocator has no room.

    Raises:
        CorruptChunkError: any header, length or checksum mismatch.
        OSError: the file cannot be read (``FileNotFoundError`` when it is gone).
    """
    with open(path, "rb", buffering=0) as f:
        header = _read_header(f, expected_key)
        buf = allocator(header.shape, header.dtype)
        if buf is None:
            return None, header
        try:
            view = buf.byte_view()
            got = 0
            mv = view.data
            while got < header.payload_len:
                n = f.readinto(mv[got:])
                if not n:
                    raise CorruptChunkError("chunk file truncated")
                got += n
            verify_payload(header, view)
        except BaseException:
            buf.unref()
            raise
    return buf, header
