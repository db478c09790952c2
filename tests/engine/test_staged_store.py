"""A store in two steps: ``stage_store`` (the copy out of the paged cache), ``commit_store``.

Committed on another thread, a staged store stores the same keys and bytes as ``store``; once
it is staged the caches may be overwritten (the commit stores the KV as it was when staged); a
prefix staged and not yet committed is not copied again by another store; a released staged
store gives its buffers back; a pool held by staged stores makes a store skip its chunks ("out
of memory") instead of waiting; a pool that runs out mid-stage puts the batch so far first.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from lmcache_native.engine import CacheEngine, StoreResult
from lmcache_native.engine.staged import StagedStore

from tests.engine.conftest import CHUNK_SIZE, MakeEngine, random_cache, read_rows, same_bytes

GB = 1024**3
TOKENS = list(range(9000, 9000 + 4 * CHUNK_SIZE))  # 4 chunks


def _slots(n: int, seed: int, base: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return base + torch.randperm(n, generator=g)


def _commit_elsewhere(e: CacheEngine, staged: StagedStore) -> tuple[StoreResult, str]:
    """Commits ``staged`` on a fresh thread; its result and the thread's name."""

    def run() -> tuple[StoreResult, str]:
        return e.commit_store(staged), threading.current_thread().name

    with ThreadPoolExecutor(1, thread_name_prefix="committer") as pool:
        return pool.submit(run).result()


def _cpu_chunks(e: CacheEngine) -> dict[str, torch.Tensor]:
    cpu = e.storage.cpu
    assert cpu is not None
    out = {}
    stored = cpu.keys()  # a list copy (the tier is not a dict)
    for key in stored:
        buf = cpu.get(key)
        assert buf is not None
        out[key] = buf.tensor.clone()
        buf.unref()
    return out


def _chunk_bytes(e: CacheEngine) -> int:
    return int(e.metadata_dict()["chunk_bytes"])


def test_commit_on_another_thread_stores_what_store_does(make_engine: MakeEngine) -> None:
    caches = random_cache(51)
    direct, split = make_engine(caches), make_engine(caches)
    tokens = TOKENS + list(range(5))  # an unfull tail, not stored
    src = _slots(len(tokens), 1)
    want = direct.store(tokens, src)
    staged = split.stage_store(tokens, src)
    assert staged.copy_done()
    assert split.pool.used_bytes == 4 * _chunk_bytes(split)  # the copies, not yet stored
    assert _cpu_chunks(split) == {}
    got, thread = _commit_elsewhere(split, staged)
    assert thread.startswith("committer")
    assert got == want == StoreResult(len(tokens), len(TOKENS), 0, "unfull chunk not saved")
    a, b = _cpu_chunks(direct), _cpu_chunks(split)
    assert sorted(a) == sorted(b) == sorted(direct.chunk_keys(TOKENS))
    assert all(same_bytes(a[k], b[k]) for k in a)
    for name in ("lmcache_stored_bytes_total", "lmcache_stored_tokens_total"):
        assert split.metrics.value(name) == direct.metrics.value(name) > 0
    label = {"direction": "gather"}
    assert split.metrics.value("lmcache_copy_bytes_total", label) == direct.metrics.value(
        "lmcache_copy_bytes_total", label
    )
    # A continued chain (offset and the previous chunk's hash) names the same keys too.
    spans = direct.chunk_spans(TOKENS)
    more = TOKENS + list(range(100, 100 + CHUNK_SIZE))
    src2 = _slots(len(more), 2)
    tail = more[2 * CHUNK_SIZE :]
    at, prev = 2 * CHUNK_SIZE, spans[1].chunk_hash
    r1 = direct.store(tail, src2[at:], offset=at, prev_hash=prev)
    r2, _ = _commit_elsewhere(split, split.stage_store(tail, src2[at:], offset=at, prev_hash=prev))
    assert r1 == r2
    assert (r2.num_stored_tokens, r2.num_skipped_chunks) == (CHUNK_SIZE, 2)
    assert (
        sorted(_cpu_chunks(direct)) == sorted(_cpu_chunks(split)) == sorted(direct.chunk_keys(more))
    )


def test_commit_after_the_cache_is_overwritten_stores_the_original_kv(
    make_engine: MakeEngine,
) -> None:
    caches = random_cache(52)
    e = make_engine(caches)
    src = _slots(len(TOKENS), 3)
    original = read_rows(caches, src)
    staged = e.stage_store(TOKENS, src, blocking=False)  # a CPU copy is done on return anyway
    assert staged.copy_done()
    for c in caches.values():
        c.zero_()  # vLLM reuses the blocks
    assert not same_bytes(read_rows(caches, src), original)
    result, _ = _commit_elsewhere(e, staged)
    assert result.num_stored_tokens == len(TOKENS)
    dst = _slots(len(TOKENS), 4, base=256)
    assert e.retrieve(TOKENS, dst).num_retrieved == len(TOKENS)
    assert same_bytes(read_rows(caches, dst), original)


def test_a_prefix_staged_twice_is_copied_once(make_engine: MakeEngine) -> None:
    e = make_engine(random_cache(53))
    src = _slots(len(TOKENS), 5)
    first = e.stage_store(TOKENS, src)
    second = e.stage_store(TOKENS, src)  # before the first is committed
    assert (len(first.chunks), len(second.chunks)) == (4, 0)
    assert e.commit_store(second) == StoreResult(len(TOKENS), 0, 4, "already stored")
    assert e.commit_store(first) == StoreResult(len(TOKENS), len(TOKENS), 0, None)
    gathered = e.metrics.value("lmcache_copy_bytes_total", {"direction": "gather"})
    assert gathered == 4 * _chunk_bytes(e)
    assert e.lookup(TOKENS) == len(TOKENS)


def test_a_released_stage_gives_its_buffers_and_keys_back(make_engine: MakeEngine) -> None:
    e = make_engine(random_cache(54))
    src = _slots(len(TOKENS), 6)
    staged = e.stage_store(TOKENS, src)
    assert e.pool.used_bytes == 4 * _chunk_bytes(e)
    e.release_store(staged)
    e.release_store(staged)  # once only
    assert e.pool.used_bytes == 0
    assert e.lookup(TOKENS) == 0
    assert e.store(TOKENS, src).num_stored_tokens == len(TOKENS)  # not claimed any more


def test_a_pool_held_by_staged_stores_skips_chunks_and_never_waits(
    make_engine: MakeEngine,
) -> None:
    caches = random_cache(55)
    size = _chunk_bytes(make_engine(caches))
    e = make_engine(caches, max_local_cpu_size=2 * size / GB)
    held = e.stage_store(TOKENS[: 2 * CHUNK_SIZE], _slots(2 * CHUNK_SIZE, 7))
    assert e.pool.used_bytes == 2 * size  # the whole pool, not evictable yet
    other = list(range(20_000, 20_000 + 2 * CHUNK_SIZE))
    other_slots = _slots(2 * CHUNK_SIZE, 8, base=256)
    staged = e.stage_store(other, other_slots)
    assert staged.chunks == []
    assert e.commit_store(staged) == StoreResult(2 * CHUNK_SIZE, 0, 2, "out of memory")
    skipped = e.metrics.value("lmcache_skipped_store_chunks_total", {"reason": "out of memory"})
    assert skipped == 2
    assert e.commit_store(held).num_stored_tokens == 2 * CHUNK_SIZE
    # Committed chunks are the CPU tier's (evictable): the next store gets its buffers.
    assert e.store(other, other_slots).num_stored_tokens == 2 * CHUNK_SIZE


def test_a_pool_that_runs_out_mid_stage_puts_the_batch_so_far(make_engine: MakeEngine) -> None:
    caches = random_cache(56)
    size = _chunk_bytes(make_engine(caches))
    e = make_engine(caches, max_local_cpu_size=3 * size / GB)
    tokens = TOKENS + list(range(30_000, 30_000 + 4 * CHUNK_SIZE))  # 8 chunks
    src = _slots(len(tokens), 9)
    staged = e.stage_store(tokens, src)
    # Chunks 0-2 and 3-5 were copied and put when the pool ran out; 6 and 7 wait for the commit.
    assert staged.outcome.stored_tokens == 6 * CHUNK_SIZE
    assert len(staged.chunks) == 2
    result = e.commit_store(staged)
    assert (result.num_stored_tokens, result.num_skipped_chunks, result.reason) == (
        len(tokens),
        0,
        None,
    )
    cpu = _cpu_chunks(e)
    keys = e.chunk_keys(tokens)
    assert sorted(cpu) == sorted(keys[5:])
    for i in range(5, 8):
        want = read_rows(caches, src[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE])
        assert same_bytes(cpu[keys[i]], want)


def test_a_stage_without_its_copy_is_filled_later(make_engine: MakeEngine) -> None:
    caches = random_cache(57)
    e = make_engine(caches)
    src = _slots(len(TOKENS), 10)
    staged = e.stage_store(TOKENS, src, copy=False)
    assert len(staged.chunks) == 4
    assert e.metrics.value("lmcache_copy_bytes_total", {"direction": "gather"}) == 0
    e.fill_store(staged)
    assert e.commit_store(staged).num_stored_tokens == len(TOKENS)
    dst = _slots(len(TOKENS), 11, base=256)
    assert e.retrieve(TOKENS, dst).num_retrieved == len(TOKENS)
    assert same_bytes(read_rows(caches, dst), read_rows(caches, src))
