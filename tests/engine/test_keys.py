"""Chunk keys: the chained hash formula, determinism across processes, key strings."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import xxhash
from lmcache_native.engine.keys import HASH_FUNCTIONS, CacheKey, ChunkHasher, tokens_to_array

SEED = b"lmcache-native/chunk-hash/v1"


def expected_chain(tokens: list[int], chunk_size: int, fn, keep_tail: bool) -> list[str]:
    out, prev = [], SEED
    stop = len(tokens) if keep_tail else len(tokens) // chunk_size * chunk_size
    for s in range(0, stop, chunk_size):
        chunk = tokens[s : min(s + chunk_size, stop)]
        prev = fn(prev + np.asarray(chunk, dtype="<i8").tobytes())
        out.append(prev.hex())
    return out


@pytest.mark.parametrize(
    ("algo", "fn", "hexlen"),
    [
        ("builtin", lambda b: xxhash.xxh3_64_digest(b), 16),
        ("xxh3_128", lambda b: xxhash.xxh3_128_digest(b), 32),
        ("sha256", lambda b: hashlib.sha256(b).digest(), 64),
        ("sha256_cbor_64bit", lambda b: hashlib.sha256(b).digest()[:8], 16),
    ],
)
def test_chained_hash_formula(algo: str, fn, hexlen: int) -> None:
    tokens = list(range(1000, 1070))
    spans = ChunkHasher(algo).spans(tokens, 16, save_unfull_chunk=True)
    assert [(s.start, s.end) for s in spans] == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 70)]
    assert [s.chunk_hash for s in spans] == expected_chain(tokens, 16, fn, True)
    assert all(len(s.chunk_hash) == hexlen for s in spans)


def test_tail_dropped_unless_save_unfull_chunk() -> None:
    h = ChunkHasher()
    assert [s.end for s in h.spans(list(range(40)), 16, False)] == [16, 32]
    assert [s.end for s in h.spans(list(range(40)), 16, True)] == [16, 32, 40]
    assert h.spans(list(range(10)), 16, False) == []
    assert h.spans([], 16, True) == []


def test_prefix_chaining() -> None:
    h = ChunkHasher()
    a = [s.chunk_hash for s in h.spans(list(range(64)), 16, False)]
    b_tokens = list(range(64))
    b_tokens[20] = 9999  # chunk 1 differs
    b = [s.chunk_hash for s in h.spans(b_tokens, 16, False)]
    assert a[0] == b[0]
    assert a[1] != b[1]
    assert a[2] != b[2]
    assert a[3] != b[3]
    # the same tokens in chunk 2 after a different prefix give a different hash
    assert len(set(a) | set(b)) == 7


def test_input_types_agree() -> None:
    h = ChunkHasher()
    ref = h.spans(list(range(48)), 16, False)
    assert h.spans(torch.arange(48), 16, False) == ref
    assert h.spans(torch.arange(48, dtype=torch.int32), 16, False) == ref
    assert h.spans(np.arange(48, dtype=np.int16), 16, False) == ref
    with pytest.raises(ValueError, match="integers"):
        tokens_to_array(torch.ones(4))
    with pytest.raises(ValueError, match="one-dimensional"):
        tokens_to_array([[1, 2]])


def test_deterministic_across_processes_and_hash_seeds() -> None:
    here = [s.chunk_hash for s in ChunkHasher().spans(list(range(100)), 16, True)]
    code = (
        "from lmcache_native.engine.keys import ChunkHasher;"
        "print(','.join(s.chunk_hash for s in ChunkHasher().spans(list(range(100)), 16, True)))"
    )
    for seed in ("12345",):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().split(",") == here


def test_every_configured_algorithm_exists() -> None:
    for name in HASH_FUNCTIONS:
        assert ChunkHasher(name).spans([1, 2, 3], 2, True)
    with pytest.raises(ValueError, match="pre_caching_hash_algorithm"):
        ChunkHasher("md5")


def test_cache_key_round_trip() -> None:
    k = CacheKey("meta-llama/Llama-3@v2", 4, 3, "00ab", "bfloat16")
    s = k.to_string()
    assert s == "meta-llama/Llama-3@v2@4@3@00ab@bfloat16"
    assert CacheKey.from_string(s) == k
    assert str(k) == s


@pytest.mark.parametrize(
    "bad",
    ["", "a@b@c", "m@x@0@ab@bf16", "m@1@0@zz@bf16", "m@1@0@AB@bf16", "@1@0@ab@bf16", "m@1@0@ab@"],
)
def test_cache_key_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="not a chunk key"):
        CacheKey.from_string(bad)
