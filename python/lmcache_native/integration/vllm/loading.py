"""The worker's load path: stored chunks into vLLM's blocks, before the forward that reads them.

``start_load_kv`` loads each planned request through the engine, whose native ops run on the
caller's current stream (vLLM's), so the copies are ordered with the forward's kernels. A load
that comes back shorter than planned, or fails, reports the blocks it could not fill
(:meth:`LoadPath.take_load_errors`), so vLLM recomputes them instead of reading stale KV.

A load planned ``async_load`` (see :mod:`.modes`) runs on a background thread instead: the disk
reads or Redis GETs, their verification and the copy into the request's blocks (which vLLM does
not touch while the request waits for them). :meth:`LoadPath.finished_loads`, called from
``get_finished`` on the forward thread, collects the loads that are done, counts them, reports
what they could not fill and names their requests for vLLM's ``finished_recving``. In a step
without a forward, :meth:`LoadPath.wait_for_loads` first waits a moment (without the GIL) for one
of them to finish: vLLM's idle engine loop would otherwise run step after step and hold the GIL
the loads need between their native calls (see :mod:`.modes`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import torch

from lmcache_native.engine.metadata import RetrieveResult
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    slot_mapping,
)
from lmcache_native.integration.vllm.state import WorkerState

logger = logging.getLogger("lmcache_native.integration.vllm")


def _copies_done(device: torch.device) -> None:
    """Waits until the copies this thread enqueued on its current stream have run.

    Only a background load calls it, before its future completes, so that ``get_finished``
    reports a load once its KV is in vLLM's blocks; it waits on an event recorded after those
    copies, not for everything on the stream. A load on the forward thread waits for nothing:
    its copies run on vLLM's current stream, ordered before the forward that reads them, and
    the engine's (blocking) copies are done with their host buffers when it returns.
    """
    if device.type == "cuda":
        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        done.record(torch.cuda.current_stream(device))
        done.synchronize()


_LOAD_THREADS = 4  # background loads at once (disk reads and Redis GETs overlap)


class LoadPath(WorkerState):
    """Loads of the worker side (a part of :class:`~.worker.WorkerSide`)."""

    def fail_loads(self, loads: list[LoadSpec]) -> None:
        """Reports every block of ``loads``' windows as not loaded.

        A background load already started is left to finish and report itself; one that was not
        is reported finished by the next :meth:`finished_loads`.
        """
        for spec in loads:
            if spec.async_load:
                if spec.req_id in self._async_loads:
                    continue
                self._async_loads[spec.req_id] = (spec, None)
            self._fail_load(spec, spec.start)

    def start_load_kv(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Loads every planned request of this step into vLLM's cache (before the forward).

        A load that raises reports its whole window (some of it may have been written). Each
        load releases its request's lease.
        """
        self.release(meta.released)
        self.expire_leases()
        if self.engine is None or not self.loads:
            self.fail_loads(meta.loads)
            self.release([s.req_id for s in meta.loads if not s.async_load])
            return
        self._prefetch([s for s in meta.loads if not s.async_load])
        for spec in meta.loads:
            if spec.async_load:
                self._start_async(spec)
                continue
            try:
                self._load(spec)
            except Exception as e:  # reported to vLLM, which recomputes
                self._failed("load", e)
                self._fail_load_raised(spec)
            finally:
                self.release([spec.req_id])

    def _prefetch(self, specs: list[LoadSpec]) -> None:
        """Starts the disk reads and Redis GETs of this step's loads now, in load order (a hint).

        The loads run one after another, so without it the reads of the second request
        would wait for the first request's copy; each load then takes its chunks from the CPU
        tier, or waits for the read started here. The reads are queued in the order of the
        loads, so the first load's chunks come first. What fails is reported by the load.
        """
        if len(specs) < 2:
            return  # one load reads ahead by itself
        assert self.engine is not None
        for spec in specs:
            if len(spec.token_ids) < spec.end:
                continue  # no plan to load (see ``_retrieve``)
            try:
                self.engine.prefetch(spec.token_ids[: spec.end], spec.extras, spec.start)
            except Exception as e:  # the load reports it
                logger.debug("LMCacheNativeConnector: prefetch of %s: %s", spec.req_id, e)

    def _fail_load(self, spec: LoadSpec, first_missing: int) -> None:
        if first_missing >= spec.end:
            return
        first_block = first_missing // self.block_size
        last_block = (spec.end - 1) // self.block_size
        self._load_errors.update(spec.block_ids[first_block : last_block + 1])
        self.stats.load_failed_tokens += spec.end - first_missing
        if first_missing > spec.start or not self._load_raised:
            self.vllm_stats.add("failed_loads")  # a raised load was counted by ``_failed``
        if self.rank == 0:
            self.vllm_stats.add("failed_load_tokens", spec.end - first_missing)
        if self.metrics is not None:
            self.metrics.load_failed_tokens.inc(spec.end - first_missing)
        logger.warning(
            "LMCacheNativeConnector: request %s: tokens %d..%d could not be loaded; reported "
            "blocks %s to vLLM",
            spec.req_id,
            first_missing,
            spec.end,
            spec.block_ids[first_block : last_block + 1],
        )

    def _start_async(self, spec: LoadSpec) -> None:
        """Starts ``spec``'s load on a background thread."""
        if spec.req_id in self._async_loads:
            return  # already running: reported once, when it is done
        if self._load_pool is None:
            self._load_pool = ThreadPoolExecutor(_LOAD_THREADS, thread_name_prefix="lmcn-load")
        try:
            future = self._load_pool.submit(self._retrieve, spec, True)
        except Exception as e:  # reported to vLLM, which recomputes
            self._failed("load", e)
            self._async_loads[spec.req_id] = (spec, None)
            self._fail_load_raised(spec)
            return
        self._async_loads[spec.req_id] = (spec, future)

    def wait_for_loads(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds until a background load is done (GIL released).

        Returns at once when none is running or one is done already.

        Returns:
            Whether a background load is done (to be collected by :meth:`finished_loads`).
        """
        running = []
        for _, future in self._async_loads.values():
            if future is None or future.done():
                return True
            running.append(future)
        if not running or timeout <= 0:
            return False
        done, _ = wait_futures(running, timeout, FIRST_COMPLETED)
        return bool(done)

    def finished_loads(self) -> set[str]:
        """Requests whose background loads are done (each named once), for ``finished_recving``.

        Their counts are taken and the blocks they could not fill reported here, on the
        forward thread, before vLLM asks for load errors.
        """
        done: set[str] = set()
        for req_id, (spec, future) in list(self._async_loads.items()):
            if future is not None and not future.done():
                continue
            del self._async_loads[req_id]
            done.add(req_id)
            self.stats.async_loads += 1
            try:
                if future is not None:
                    exc = future.exception()
                    if exc is not None:
                        self._failed("load", exc)
                        self._fail_load_raised(spec)
                    else:
                        self._account_load(spec, future.result())
            finally:
                self.release([req_id])
        return done

    def drain_loads(self) -> None:
        """Waits for every background load (before the engine closes)."""
        if self._load_pool is not None:
            self._load_pool.shutdown(wait=True)
            self._load_pool = None
        self.finished_loads()  # counted, and their leases let go

    def _fail_load_raised(self, spec: LoadSpec) -> None:
        self._load_raised = True
        try:
            self._fail_load(spec, spec.start)
        finally:
            self._load_raised = False

    def _load(self, spec: LoadSpec) -> None:
        self._account_load(spec, self._retrieve(spec))

    def _retrieve(self, spec: LoadSpec, background: bool = False) -> tuple[int, float] | None:
        """Loads ``spec``'s window: (first token not loaded, seconds), ``None`` for no plan.

        Touches nothing but the engine and the request's blocks, so it may run on a background
        thread; there (``background``) it returns once its copies have run.
        """
        assert self.engine is not None
        n = len(spec.token_ids)
        if n < spec.end:  # the plan failed on the scheduler side: nothing to load
            return None
        slots = self._load_slots(spec)
        t0 = time.perf_counter()
        result = self.engine.retrieve(spec.token_ids, slots, spec.extras)
        if background:
            _copies_done(self._device)
        return self._first_missing(spec, result), time.perf_counter() - t0

    def _load_slots(self, spec: LoadSpec) -> torch.Tensor:
        """``[len(spec.token_ids)]`` int64 slots to load ``spec`` into; -1 outside its window."""
        n = len(spec.token_ids)
        held = min(n, len(spec.block_ids) * self.block_size)
        slots = torch.full((n,), -1, dtype=torch.int64)
        slots[:held] = slot_mapping(spec.block_ids, self.block_size, held)
        # Positions vLLM already holds, and past what it asked for, are left alone.
        slots[: spec.start] = -1
        slots[spec.end :] = -1
        return slots

    def _loaded(self, spec: LoadSpec, result: RetrieveResult, dt: float) -> None:
        """Counts what a load of ``spec`` wrote and reports the blocks it could not fill."""
        self._account_load(spec, (self._first_missing(spec, result), dt))

    @staticmethod
    def _first_missing(spec: LoadSpec, result: RetrieveResult) -> int:
        """The first position of ``spec``'s window that ``result`` did not load."""
        window = result.mask[spec.start : spec.end].to(torch.bool)
        missing = (~window).nonzero()
        return spec.end if missing.numel() == 0 else spec.start + int(missing[0, 0])

    def _account_load(self, spec: LoadSpec, outcome: tuple[int, float] | None) -> None:
        """Counts a load and reports the blocks it could not fill (on the forward thread)."""
        if outcome is None:
            self._fail_load(spec, spec.start)
            return
        first_missing, dt = outcome
        loaded = first_missing - spec.start
        self._count_transfer("retrieve", spec.req_id, loaded, spec.end - spec.start, dt)
        self._fail_load(spec, first_missing)

    def take_load_errors(self) -> set[int]:
        """Blocks that loads of this step could not fill (then forgotten)."""
        errors, self._load_errors = self._load_errors, set()
        return errors
