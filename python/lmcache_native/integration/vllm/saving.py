"""The worker's save path: what a step computed, from vLLM's blocks into the engine.

``wait_for_save`` runs after the forward. The worker keeps each request's tokens, blocks and
chunk-hash chain (:class:`SaveState`) and hands the engine only what is new since the request's
last full stored chunk, so a request's saves cost what they add. A failed store is counted
(``lmcache_vllm_store_failures_total``) and logged once per cause, never raised.

With ``enable_async_saving`` (see :mod:`.modes`), ``wait_for_save`` only plans each store (the
request's state, its slots, the chain hash of its new chunks) and hands it to one background
thread, in order: the copy out of vLLM's blocks, the chunk keys, checksums, the CPU tier and the
disk and Redis writes run there. The blocks stay valid meanwhile: a finished request's are held
by vLLM until :meth:`SavePath.finished_sending` names it (delayed free), a preempted request's
stores are waited for by :meth:`SavePath.wait_saves` before the forward that may reuse them, and
a running request's stored positions are never rewritten. Counts, logs and KV events of a
background store are taken on the forward thread once it is done; ``close`` waits for all.
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
        # The chain moves on now: the next step's plan continues from it (a store that fails
        # later leaves a gap, a later miss, never a wrong key).
        st = planned.state
        st.hashed_upto, st.prev_hash = max(planned.begin, planned.full_end), planned.next_hash
        if self._save_pool is None:
            self._save_pool = ThreadPoolExecutor(1, thread_name_prefix="lmcn-save")
        ready = _step_done(self._device)
        self._save_jobs.append((planned, self._save_pool.submit(self._run_store, planned, ready)))

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
        done = self._run_store(p, None, store)
        p.state.hashed_upto, p.state.prev_hash = max(p.begin, p.full_end), p.next_hash
        self._account_store(done)

    def _run_store(
        self, p: PlannedSave, ready: torch.cuda.Event | None = None, store: StoreFn | None = None
    ) -> _StoreDone:
        """Runs ``p``'s store (on the forward thread, or the background one after ``ready``)."""
        engine = self.engine
        assert engine is not None
        if ready is not None:
            ready.synchronize()  # the forward that wrote these blocks is done
        extras = p.state.extras
        watch = (
            self.kv_events.watch(engine, p.tokens, extras, p.begin, p.prev_hash)
            if self.events_enabled
            else None
        )
        t0 = time.perf_counter()
        result = (store or engine.store)(
            p.tokens, p.slots, extras, offset=p.begin, prev_hash=p.prev_hash
        )
        return _StoreDone(p, result, time.perf_counter() - t0, watch)

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
        """Requests whose blocks vLLM held for their stores, now all done (each named once).

        For ``get_finished``'s first set.
        """
        self.finished_saves()
        if not self._sending:
            return set()
        busy = {planned.req_id for planned, _ in self._save_jobs}
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


def _step_done(device: torch.device) -> torch.cuda.Event | None:
    """On CUDA, an event after the work queued so far on the current stream (the forward)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record(torch.cuda.current_stream(device))
    return event
