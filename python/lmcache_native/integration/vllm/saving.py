"""The worker's save path: what a step computed, from vLLM's blocks into the engine.

``wait_for_save`` runs after the forward. The worker keeps each request's tokens, blocks and
chunk-hash chain (:class:`SaveState`) and hands the engine only what is new since the request's
last full stored chunk, so a request's saves cost what they add. A failed store is counted
(``lmcache_vllm_store_failures_total``) and logged once per cause, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmcache_native.engine.metadata import StoreResult
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
    """

    req_id: str
    state: SaveState
    begin: int
    n: int
    tokens: list[int]
    slots: torch.Tensor
    full_end: int
    next_hash: str | None


class SavePath(WorkerState):
    """Saves of the worker side (a part of :class:`~.worker.WorkerSide`)."""

    def wait_for_save(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Stores what this step computed (after the forward)."""
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
        if planned is not None:
            self._store_planned(planned)

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
        return PlannedSave(spec.req_id, st, begin, n, tokens, slots, full_end, next_hash)

    def _store_planned(self, p: PlannedSave, store: StoreFn | None = None) -> None:
        """Stores what :meth:`_plan_save` planned (through ``store``, default the engine's)."""
        engine = self.engine
        assert engine is not None
        st, begin, n, tokens, slots = p.state, p.begin, p.n, p.tokens, p.slots
        full_end, next_hash = p.full_end, p.next_hash
        watch = (
            self.kv_events.watch(engine, tokens, st.extras, begin, st.prev_hash)
            if self.events_enabled
            else None
        )
        t0 = time.perf_counter()
        result = (store or engine.store)(
            tokens, slots, st.extras, offset=begin, prev_hash=st.prev_hash
        )
        dt = time.perf_counter() - t0
        st.hashed_upto, st.prev_hash = max(begin, full_end), next_hash
        stored = int(result.num_stored_tokens)
        self.stats.store_requests += 1
        self.stats.stored_tokens += stored
        vs = self.vllm_stats
        vs.add("store_requests")
        vs.add("stored_bytes", stored * self._bytes_per_token)
        vs.add("save_seconds", dt)
        if self.rank == 0:
            vs.add("stored_tokens", stored)
        if watch is not None:
            self.kv_events.stored(watch, st.tokens, st.extras, stored)
        if self.metrics is not None:
            self.metrics.stored_tokens.inc(stored)
        nbytes = stored * self._bytes_per_token
        logger.info(
            "LMCacheNativeConnector store %s: %d/%d tokens, %d bytes, %.3f ms, %.2f GB/s%s",
            p.req_id,
            stored,
            n,
            nbytes,
            dt * 1e3,
            nbytes / dt / 1e9 if dt > 0 else 0.0,
            f" ({result.reason})" if result.reason else "",
        )
