"""Chunk keys of vLLM requests: cache salt, LoRA adapter and multimodal items are keyed.

A plain request keeps the keys it always had (stores made before extras existed stay valid);
a salt or an adapter changes every key of the request; a multimodal item changes the chunks
covering its placeholder (and, through the chain, every later chunk) and nothing before it.
"""

from __future__ import annotations

import pytest
import torch
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.engine.keys import ChunkHasher, KeyExtras, MMPlaceholder

CHUNK = 16


def _hashes(tokens: list[int], extras: KeyExtras | None = None, unfull: bool = True) -> list[str]:
    return [s.chunk_hash for s in ChunkHasher().spans(tokens, CHUNK, unfull, extras)]


def test_plain_keys_are_pinned() -> None:
    # Computed by the key code before extras existed: existing stores must stay valid.
    plain = _hashes(list(range(100)))
    assert plain[:2] == ["7b1f4be4176eeb2e", "79e3af3257bfa67b"]
    assert plain[-1] == "3a5755e21f1fa7ff"
    assert (
        ChunkHasher("sha256").spans(list(range(64)), 64, False)[0].chunk_hash
        == "e311bad38594f86d1ecd8aa62f26826bd4e02b47465659f01d1eb253bcc5a409"
    )
    # Empty extras are no extras.
    assert _hashes(list(range(100)), KeyExtras()) == plain
    assert _hashes(list(range(100)), KeyExtras(cache_salt="")) == plain


def test_salt_and_adapter_change_every_key() -> None:
    tokens = list(range(64))
    plain = _hashes(tokens)
    variants = [
        KeyExtras(cache_salt="a"),
        KeyExtras(cache_salt="b"),
        KeyExtras(lora_name="sql", lora_id=1),
        KeyExtras(lora_name="sql", lora_id=2),
        KeyExtras(lora_name="chat", lora_id=1),
        KeyExtras(cache_salt="a", lora_name="sql", lora_id=1),
    ]
    chains = [_hashes(tokens, v) for v in variants]
    for chain in chains:
        assert len(chain) == 4
        assert not set(chain) & set(plain)
    # Every variant is its own key space; the same extras give the same keys.
    assert len({tuple(c) for c in chains}) == len(variants)
    assert _hashes(tokens, KeyExtras(cache_salt="a")) == chains[0]


def test_multimodal_items_key_the_chunks_covering_their_placeholders() -> None:
    tokens = [7] * 64  # placeholder tokens are all the same id: only the hash tells images apart
    img_a = KeyExtras(mm=(MMPlaceholder("hash-a", 20, 8),))  # inside chunk 1
    img_b = KeyExtras(mm=(MMPlaceholder("hash-b", 20, 8),))
    moved = KeyExtras(mm=(MMPlaceholder("hash-a", 21, 8),))
    plain, a, b, m = (_hashes(tokens, x) for x in (None, img_a, img_b, moved))
    assert a[0] == b[0] == m[0] == plain[0]  # chunk 0 does not cover the placeholder
    for i in (1, 2, 3):  # chunk 1 covers it; chunks 2, 3 follow it in the chain
        assert len({plain[i], a[i], b[i], m[i]}) == 4
    # A placeholder spanning two chunks is mixed into both.
    span = KeyExtras(mm=(MMPlaceholder("hash-a", 12, 10),))
    s = _hashes(tokens, span)
    assert s[0] != plain[0]
    assert s[1] != _hashes(tokens[:16] + tokens[16:], img_a)[1]


def test_chain_continues_from_a_chunk_boundary() -> None:
    tokens = list(range(1000, 1100))
    extras = KeyExtras(cache_salt="s", mm=(MMPlaceholder("x", 40, 30),))
    for ex in (None, extras):
        full = ChunkHasher().spans(tokens, CHUNK, True, ex)
        tail = ChunkHasher().spans(
            tokens[48:], CHUNK, True, ex, offset=48, prev_hash=full[2].chunk_hash
        )
        assert [t.chunk_hash for t in tail] == [f.chunk_hash for f in full[3:]]
        assert [(t.start + 48, t.end + 48) for t in tail] == [(f.start, f.end) for f in full[3:]]
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        ChunkHasher().spans(tokens, CHUNK, True, offset=5, prev_hash="00")
    with pytest.raises(ValueError, match="prev_hash"):
        ChunkHasher().spans(tokens, CHUNK, True, offset=16)


def test_extras_round_trip_and_refuse_bad_fields() -> None:
    ex = KeyExtras("salt", "adapter", 3, (MMPlaceholder("h", 1, 2), MMPlaceholder("g", 9, 4)))
    assert KeyExtras.from_dict(ex.to_dict()) == ex
    assert KeyExtras.from_dict({}) == KeyExtras()
    for bad in ({"cache_salt": 3}, {"lora_id": "x"}, {"mm": [["h", "x", 1]]}, {"mm": [1]}):
        with pytest.raises(ValueError, match="bad key extras"):
            KeyExtras.from_dict(bad)


def test_engine_keeps_salted_stores_apart() -> None:
    config = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, max_local_cpu_size=0.01)
    cache = torch.randn(8, 2, 16, 2 * 8)
    with CacheEngine(config, EngineMetadata(model_name="m")) as engine:
        engine.register_kv_caches({"l0": cache}, "vllm_cpu")
        tokens = list(range(64))
        slots = torch.arange(64)
        a, b = KeyExtras(cache_salt="a"), KeyExtras(cache_salt="b")
        assert engine.store(tokens, slots, a).num_stored_tokens == 64
        assert engine.lookup(tokens, a) == 64
        assert engine.lookup(tokens, b) == 0
        assert engine.lookup(tokens) == 0
        assert engine.retrieve(tokens, slots, b).num_retrieved == 0
        assert engine.retrieve(tokens, slots, a).num_retrieved == 64
        # The plain request stores its own chunks next to the salted ones.
        assert engine.store(tokens, slots).num_stored_tokens == 64
        assert set(engine.chunk_keys(tokens)).isdisjoint(engine.chunk_keys(tokens, a))
