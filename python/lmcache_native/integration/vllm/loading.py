"""The worker's load path: stored chunks into vLLM's blocks, before the forward that reads them.

``start_load_kv`` loads each planned request through the engine, whose native ops run on the
caller's current stream (vLLM's), so the copies are ordered with the forward's kernels. A load
that comes back shorter than planned, or fails, reports the blocks it could not fill
(:meth:`LoadPath.take_load_errors`), so vLLM recomputes them instead of reading stale KV.
"""

from __future__ import annotations

import logging
import time

import torch

from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    slot_mapping,
)
from lmcache_native.integration.vllm.state import WorkerState

logger = logging.getLogger("lmcache_native.integration.vllm")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class LoadPath(WorkerState):
    """Loads of the worker side (a part of :class:`~.worker.WorkerSide`)."""

    def fail_loads(self, loads: list[LoadSpec]) -> None:
        """Reports every block of ``loads``' windows as not loaded."""
        for spec in loads:
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
            self.release([s.req_id for s in meta.loads])
            return
        for spec in meta.loads:
            try:
                self._load(spec)
            except Exception as e:  # reported to vLLM, which recomputes
                self._failed("load", e)
                self._load_raised = True
                try:
                    self._fail_load(spec, spec.start)
                finally:
                    self._load_raised = False
            finally:
                self.release([spec.req_id])

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

    def _load(self, spec: LoadSpec) -> None:
        assert self.engine is not None
        n = len(spec.token_ids)
        if n < spec.end:  # the plan failed on the scheduler side: nothing to load
            self._fail_load(spec, spec.start)
            return
        held = min(n, len(spec.block_ids) * self.block_size)
        slots = torch.full((n,), -1, dtype=torch.int64)
        slots[:held] = slot_mapping(spec.block_ids, self.block_size, held)
        # Positions vLLM already holds, and past what it asked for, are left alone.
        slots[: spec.start] = -1
        slots[spec.end :] = -1
        t0 = time.perf_counter()
        result = self.engine.retrieve(spec.token_ids, slots, spec.extras)
        _sync(self._device)
        dt = time.perf_counter() - t0
        window = result.mask[spec.start : spec.end].to(torch.bool)
        missing = (~window).nonzero()
        first_missing = spec.end if missing.numel() == 0 else spec.start + int(missing[0, 0])
        loaded = first_missing - spec.start
        self.stats.load_requests += 1
        self.stats.loaded_tokens += loaded
        vs = self.vllm_stats
        vs.add("load_requests")
        vs.add("loaded_bytes", loaded * self._bytes_per_token)
        vs.add("load_seconds", dt)
        if self.rank == 0:
            vs.add("loaded_tokens", loaded)
        if self.metrics is not None:
            self.metrics.loaded_tokens.inc(loaded)
        self._fail_load(spec, first_missing)
        nbytes = loaded * self._bytes_per_token
        logger.info(
            "LMCacheNativeConnector retrieve %s: %d/%d tokens, %d bytes, %.3f ms, %.2f GB/s",
            spec.req_id,
            loaded,
            spec.end - spec.start,
            nbytes,
            dt * 1e3,
            nbytes / dt / 1e9 if dt > 0 else 0.0,
        )

    def take_load_errors(self) -> set[int]:
        """Blocks that loads of this step could not fill (then forgotten)."""
        errors, self._load_errors = self._load_errors, set()
        return errors
