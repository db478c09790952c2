"""The worker's save path: what a step computed, from vLLM's blocks into the engine.

``wait_for_save`` runs after the forward. The worker keeps each request's tokens, blocks and
chunk-hash chain (:class:`SaveState`) and hands the engine only what is new since the request's
last full stored chunk, so a request's saves cost what they add. A failed store is counted
(``lmcache_vllm_store_failures_total``) and logged once per cause, never raised.

With ``enable_async_saving`` (see :mod:`.modes`), ``wait_for_save`` copies each store's chunks
out of vLLM's blocks into pool buffers (``CacheEngine.stage_store``: the chunk keys, which
chunks storage lacks, one native gather) and hands the commit (``CacheEngine.commit_store``:
the puts into the CPU tier, the disk and Redis writes handed to the tiers' writer thread) to
one background thread, in order. On the
CPU the copy is done when ``wait_for_save`` returns, so vLLM may reuse the blocks at once. On
CUDA the copy is only enqueued on the forward's stream; until it is done a finished request's
blocks are held by vLLM (delayed free: :meth:`SavePath.finished_sending` names it once its
copies are done) and a preempted request's stores are waited for by :meth:`SavePath.wait_saves`
before the forward that may reuse them. Counts, logs and KV events of a background store are
taken on the forward thread once it is done; ``close`` waits for all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

import torch

from lmcache_native.engine.metadata import StoreResult
from lmcache_native.engine.staged import StagedStore
from lmcache_native.integration.vllm.events import StoreWatch
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    SaveSpec,
    slot_range,
)
from lmcache_native.integration.vllm.state import SaveState, WorkerState

logger = logging.getLogger("lmcache_native.integration.vllm")

#: ``CacheEngine.store``'s signature: ``(tokens, slots, extras, *, offset, prev_hash)``.
StoreFn = Callable[..., StoreResult]


@dataclass
class PlannedSave:
    """One request's store of a step, planned before it runs (see ``SavePath._plan_save``).

    Attributes:
        req_id: the request.
        state: its save state (already advanced by the step's ``SaveSpec``).
        begin: first request position handed to the store (a chunk boundary).
        n: end of what is stored.
        tokens: ``state.tokens[begin:n]``.
        slots: ``[n - begin]`` int64 CPU slots of those tokens.
        full_end: end of the last full chunk (``n`` rounded down to ``chunk_size``).
        next_hash: the chain hash at ``full_end`` once stored.
        prev_hash: the chain hash at ``begin`` (``None`` at 0).
        staged: with async saves, the store copied out of vLLM's blocks, to commit.
    """

    req_id: str
    state: SaveState
    begin: int
    n: int
    tokens: list[int]
    slots: torch.Tensor
    full_end: int
    next_hash: str | None
    prev_hash: str | None = None
    staged: StagedStore | None = None


@dataclass
class _StoreDone:
    """A store that ran: what it planned, what the engine answered, its seconds, its watch."""

    planned: PlannedSave
    result: StoreResult
    seconds: float
    watch: StoreWatch | None


class SavePath(WorkerState):
    """Saves of the worker side (a part of :class:`~.worker.WorkerSide`)."""

    def wait_for_save(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Stores what this step computed (after the forward), or hands it to the background."""
        self._sending.update(meta.delayed_free)
        self.release(meta.released)
        if self.engine is None or not self.saves:
            return
        save_decode = bool(self.config.get("save_decode_cache"))
        for spec in meta.saves:
            try:
                self._save(spec, save_decode)
            except Exception as e:  # a lost store is only a later miss
                self._failed("store", e)

    def _save(self, spec: SaveSpec, save_decode: bool) -> None:
        """Applies ``spec`` to the request's state and stores what is new.

        Only the tokens from the request's last full stored chunk on are hashed (the chain is
        continued from its hash) and handed to the engine, so a request's saves cost what they
        add.
        """
        planned = self._plan_save(spec, save_decode)
        if planned is None:
            return
        if not self.async_saving:
            self._store_planned(planned)
            return
        self._stage_planned(planned)

    def _stage_planned(
        self, p: PlannedSave, stage: Callable[[], StagedStore] | None = None
    ) -> None:
        """Copies ``p``'s chunks out of vLLM's blocks now; commits them in the background.

        ``stage`` stages the store (default: ``CacheEngine.stage_store`` of ``p``, a CUDA copy
        only enqueued).
        """
        engine = self.engine
        assert engine is not None
        # The chain moves on now: the next step's plan continues from it (a store that fails
        # later leaves a gap, a later miss, never a wrong key).
        st = p.state
        st.hashed_upto, st.prev_hash = max(p.begin, p.full_end), p.next_hash
        watch = self._watch(p)
        t0 = time.perf_counter()
        if stage is None:
            staged = engine.stage_store(
                p.tokens, p.slots, st.extras, offset=p.begin, prev_hash=p.prev_hash, blocking=False
            )
        else:
            staged = stage()
        p.staged = staged
        seconds = time.perf_counter() - t0
        if self._save_pool is None:
            self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="lmcn-save")
        try:
            future = self._save_pool.submit(self._commit_staged, p, seconds, watch)
        except BaseException:
            engine.release_store(staged)
            raise
        self._save_jobs.append((p, future))

    def _commit_staged(
        self, p: PlannedSave, seconds: float, watch: StoreWatch | None
    ) -> _StoreDone:
        """Commits ``p``'s staged store (on the background thread)."""
        engine = self.engine
        assert engine is not None
        assert p.staged is not None
        t0 = time.perf_counter()
        result = engine.commit_store(p.staged)
        return _StoreDone(p, result, seconds + time.perf_counter() - t0, watch)

    def _watch(self, p: PlannedSave) -> StoreWatch | None:
        """Before ``p``'s store: which of its chunks the store tier holds (KV events only)."""
        engine = self.engine
        assert engine is not None
        if not self.events_enabled:
            return None
        return self.kv_events.watch(engine, p.tokens, p.state.extras, p.begin, p.prev_hash)

    def _plan_save(self, spec: SaveSpec, save_decode: bool) -> PlannedSave | None:
        """Applies ``spec`` to the request's state; what to store now (``None``: nothing)."""
        engine = self.engine
        assert engine is not None
        st = self._saves.get(spec.req_id)
        if st is None or (spec.start == 0 and spec.block_start == 0):
            if spec.start != 0 or spec.block_start != 0:
                logger.debug("save of %s without its first part; skipped", spec.req_id)
                return None
            st = SaveState(extras=spec.extras, stored_upto=st.stored_upto if st else 0)
            self._saves[spec.req_id] = st
        if spec.start > len(st.tokens) or spec.block_start > len(st.block_ids):
            logger.warning("save of %s does not follow its last one; dropped", spec.req_id)
            self._saves.pop(spec.req_id, None)
            return None
        del st.tokens[spec.start :]
        st.tokens.extend(spec.token_ids)
        del st.block_ids[spec.block_start :]
        st.block_ids.extend(spec.block_ids)
        if spec.start < st.hashed_upto:
            st.hashed_upto, st.prev_hash = 0, None
        total = len(st.tokens)
        n = total if save_decode else min(total, spec.num_prompt_tokens)
        if n <= st.stored_upto:
            return None
        st.stored_upto = n
        begin = st.hashed_upto
        tokens = st.tokens[begin:n]
        slots = slot_range(st.block_ids, self.block_size, begin, n)
        chunk = engine.chunk_size
        full_end = n // chunk * chunk
        if full_end > begin:
            spans = engine.chunk_spans(
                st.tokens[begin:full_end], st.extras, offset=begin, prev_hash=st.prev_hash
            )
            next_hash: str | None = spans[-1].chunk_hash
        else:
            next_hash = st.prev_hash
        return PlannedSave(
            spec.req_id, st, begin, n, tokens, slots, full_end, next_hash, st.prev_hash
        )

    def _store_planned(self, p: PlannedSave, store: StoreFn | None = None) -> None:
        """Stores what :meth:`_plan_save` planned (through ``store``, default the engine's)."""
        engine = self.engine
        assert engine is not None
        watch = self._watch(p)
        t0 = time.perf_counter()
        result = (store or engine.store)(
            p.tokens, p.slots, p.state.extras, offset=p.begin, prev_hash=p.prev_hash
        )
        done = _StoreDone(p, result, time.perf_counter() - t0, watch)
        p.state.hashed_upto, p.state.prev_hash = max(p.begin, p.full_end), p.next_hash
        self._account_store(done)

    def _account_store(self, done: _StoreDone) -> None:
        """Counts, reports and logs a store that ran (on the forward thread)."""
        p, result, dt = done.planned, done.result, done.seconds
        stored = int(result.num_stored_tokens)
        if done.watch is not None:
            self.kv_events.stored(done.watch, p.tokens, p.state.extras, stored, offset=p.begin)
        self._count_transfer("store", p.req_id, stored, p.n, dt, result.reason)

    # -- background stores -------------------------------------------------------------------

    def finished_saves(self) -> None:
        """Counts the background stores that are done (a failed one as a failed store)."""
        if not self._save_jobs:
            return
        pending = []
        for planned, future in self._save_jobs:
            if not future.done():
                pending.append((planned, future))
                continue
            self.stats.async_saves += 1
            exc = future.exception()
            if exc is not None:
                self._failed("store", exc)
            else:
                self._account_store(future.result())
        self._save_jobs = pending

    def finished_sending(self) -> set[str]:
        """Requests whose blocks vLLM held for their stores, now copied out (each named once).

        For ``get_finished``'s first set. A store whose copy out of vLLM's blocks is done no
        longer needs them, even while its commit still runs.
        """
        self.finished_saves()
        if not self._sending:
            return set()
        busy = {p.req_id for p, _ in self._save_jobs if not _copied(p)}
        done = self._sending - busy
        self._sending -= done
        self.stats.delayed_frees += len(done)
        return done

    def wait_saves(self, req_ids: Iterable[str] | None = None) -> None:
        """Waits for the background stores of ``req_ids`` (all when ``None``)."""
        wanted = None if req_ids is None else set(req_ids)
        futures = [f for p, f in self._save_jobs if wanted is None or p.req_id in wanted]
        if futures:
            wait_futures(futures)
        self.finished_saves()

    def drain_saves(self) -> None:
        """Waits for every background store and stops the thread (before the engine closes)."""
        self.wait_saves()
        if self._save_pool is not None:
            self._save_pool.shutdown(wait=True)
            self._save_pool = None


def _copied(p: PlannedSave) -> bool:
    """Whether ``p``'s store no longer reads vLLM's blocks (its copy out of them is done)."""
    return p.staged is not None and p.staged.copy_done()


def copies_outlive_save(device_type: str | None = None) -> bool:
    """Whether an async save's copy out of vLLM's blocks may still run after ``wait_for_save``.

    Only on CUDA (the copy is enqueued on the forward's stream); then a finished request's
    blocks are held by vLLM until the copy is done (delayed free). ``device_type`` defaults to
    vLLM's platform's.
    """
    if device_type is None:
        try:
            from vllm.platforms import current_platform
        except ImportError:  # not inside vLLM
            return False
        device_type = str(current_platform.device_type)
    return device_type == "cuda"
