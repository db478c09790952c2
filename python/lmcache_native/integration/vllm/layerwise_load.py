"""Layer-wise loads of the vLLM connector (``use_layerwise: true``, LMCache's key).

``start_load_kv`` hands the step's loads to a :class:`LayerwiseLoad`, whose thread fetches each
request's stored chunks once (CPU tier first, lower tiers verified and promoted, as
``CacheEngine.retrieve`` does) and then writes them into vLLM's cache one layer at a time, in
layer order: layer ``i`` of every chunk is concatenated into one ``[num_kv, 1, tokens, row]``
buffer and scattered by ``ops.paged_kv_scatter`` on that layer alone. vLLM's forward calls
``wait_for_layer_load(layer)`` before each attention layer; it returns as soon as that layer is
in, so later layers are written while the model computes the earlier ones.

A failure (a chunk that cannot be fetched, a copy that raises) never leaves the thread: a fetch
failure shortens that request's load (as in the whole-forward path), a failed copy fails every
request of the step (they are reported to vLLM, which recomputes them), and every layer is
released so no wait hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from lmcache_native import ops
from lmcache_native.engine import CacheEngine
from lmcache_native.engine.fetch import ReadAhead
from lmcache_native.engine.keys import ChunkSpan, KeyExtras
from lmcache_native.engine.metadata import RetrieveResult
from lmcache_native.integration.vllm.layerwise import LayerCaches, Staging
from lmcache_native.storage.base import ChunkBufferLike

logger = logging.getLogger("lmcache_native.integration.vllm")


@dataclass
class LoadJob:
    """One load: the arguments the worker would give ``CacheEngine.retrieve``.

    Attributes:
        tokens: the request's token ids (from position 0).
        slots: ``[len(tokens)]`` int64 CPU slots to load into; -1 leaves a token alone (vLLM
            holds it, or it is past the load).
        extras: the request's key extras.
    """

    tokens: Sequence[int]
    slots: torch.Tensor
    extras: KeyExtras | None = None


@dataclass
class _Fetched:
    """A job's chunks in host memory, each with one reference."""

    loaded: int = 0  # tokens of the stored prefix found (a chunk boundary)
    chunks: list[tuple[ChunkSpan, ChunkBufferLike, str]] = field(default_factory=list)
    reason: str | None = None


class LayerwiseLoad:
    """One step's loads, written into vLLM's cache layer by layer by a background thread.

    Args:
        engine: the worker's engine (keys, tiers, metrics).
        caches: the caches the engine registered.
        jobs: the step's loads.
        staging: the layer-major buffer to use (reused across steps; a new one when ``None``).
        before_layer: called by the thread with a layer's index before it writes that layer
            (tracing; tests hold a layer back with it).
    """

    def __init__(
        self,
        engine: CacheEngine,
        caches: LayerCaches,
        jobs: Sequence[LoadJob],
        staging: Staging | None = None,
        before_layer: Callable[[int], None] | None = None,
    ) -> None:
        """Prepares the load; :meth:`start` runs it."""
        self.staging = staging if staging is not None else Staging(caches)
        self.before_layer = before_layer
        self.engine = engine
        self.caches = caches
        self.jobs = list(jobs)
        self._ready = [threading.Event() for _ in caches.names]
        self._results: list[RetrieveResult] | None = None
        self.errors: list[BaseException] = []
        self.layers_loaded = 0  # layers written into vLLM's cache (tests, logs)
        self.seconds = 0.0  # time from start to the last layer written
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        if caches.paged.device.type == "cuda":
            self._stream = torch.cuda.Stream(caches.paged.device)  # type: ignore[no-untyped-call]

    def start(self) -> None:
        """Starts the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="lmcache-layerwise-load", daemon=True
            )
            self._thread.start()

    def wait_layer(self, layer_name: str) -> None:
        """Returns once ``layer_name`` is written (at once for a layer the engine lacks)."""
        i = self.caches.index.get(layer_name)
        if i is not None:
            self._ready[i].wait()

    def layer_done(self, layer_name: str) -> bool:
        """Whether ``layer_name`` is written (or was given up)."""
        i = self.caches.index.get(layer_name)
        return i is None or self._ready[i].is_set()

    def wait(self) -> list[RetrieveResult]:
        """Waits for every layer; what each job loaded (``mask`` marks its loaded prefix)."""
        self.start()
        assert self._thread is not None
        self._thread.join()
        assert self._results is not None  # set by the thread, also on a failure
        return self._results

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        t0 = time.perf_counter()
        fetched: list[_Fetched] = []
        failed = False
        ahead: ReadAhead | None = None
        try:
            named = [self._chunks(job) for job in self.jobs]
            # The step's lower-tier reads all start now, a few chunks ahead of the fetch loop.
            ahead = self.engine.read_ahead([k for _, _, reads in named for k in reads])
            for job, chunks in zip(self.jobs, named, strict=True):
                try:
                    fetched.append(self._fetch(job, chunks, ahead))
                except Exception as e:  # this job loads nothing
                    self.errors.append(e)
                    fetched.append(_Fetched(reason=f"{type(e).__name__}: {e}"))
            ahead.close()
            ctx = torch.cuda.stream(self._stream) if self._stream is not None else nullcontext()
            with ctx:
                self._write_layers(fetched)
        except Exception as e:  # reported as failed loads, never raised
            self.errors.append(e)
            failed = True
        finally:
            if ahead is not None:
                ahead.close()
            for f in fetched:
                for _, buf, _ in f.chunks:
                    buf.unref()
            for ev in self._ready:
                ev.set()
            self.seconds = time.perf_counter() - t0
            missing = [_Fetched(reason="not fetched")] * (len(self.jobs) - len(fetched))
            self._results = [
                self._result(job, None if failed else f)
                for job, f in zip(self.jobs, fetched + missing, strict=True)
            ]

    def _result(self, job: LoadJob, f: _Fetched | None) -> RetrieveResult:
        n = len(job.tokens)
        mask = torch.zeros(n, dtype=torch.bool)
        if f is None:
            return RetrieveResult(n, 0, mask, "layer copy failed")
        mask[: f.loaded] = True
        return RetrieveResult(n, f.loaded, mask, f.reason)

    def _write_layers(self, fetched: list[_Fetched]) -> None:
        """Scatters layer after layer of every fetched chunk, releasing each layer's waiters."""
        bufs: list[ChunkBufferLike] = []
        slots: list[torch.Tensor] = []
        for f, job in zip(fetched, self.jobs, strict=True):
            for span, buf, _ in f.chunks:
                bufs.append(buf)
                slots.append(job.slots[span.start : span.end])
        if not bufs:
            return
        c = self.caches
        slot_map = torch.cat(slots)
        num_tokens = int(slot_map.numel())
        staging = self.staging.get(num_tokens)
        t0 = time.perf_counter()
        tensors = [b.tensor for b in bufs]
        sizes = {int(t.shape[2]) for t in tensors}
        if len(sizes) != 1:  # a short last chunk: all layers to layer-major rows at once
            views, layout = c.layer_views(staging)
            rows = torch.arange(num_tokens, dtype=torch.int64)
            ops.paged_kv_scatter_chunks(tensors, views, rows, layout)
        per_layer = torch.arange(sizes.pop(), dtype=torch.int64) if len(sizes) == 1 else None
        for i, cache in enumerate(c.caches):
            if self.before_layer is not None:
                self.before_layer(i)
            if per_layer is not None:  # this layer's rows of every chunk, then the layer
                views, layout = c.chunk_layer_views(tensors, i)
                out = staging[i].view(c.paged.num_kv, len(tensors), -1, c.paged.row_elems)
                ops.paged_kv_gather(views, per_layer, out, layout)
            ops.paged_kv_scatter(staging[i].unsqueeze(1), [cache], slot_map, c.layout)
            self.layers_loaded += 1
            self._ready[i].set()
        m = self.engine.metrics
        m.copy_seconds.labels(direction="scatter").observe(time.perf_counter() - t0)
        m.copy_bytes.labels(direction="scatter").inc(sum(buf.nbytes for buf in bufs))

    def _chunks(self, job: LoadJob) -> tuple[list[ChunkSpan], list[str], list[str]]:
        """``job``'s chunks, their keys, and the keys to read (not all padding slots)."""
        spans = self.engine.chunk_spans(job.tokens, job.extras)
        keys = self.engine.span_keys(spans)
        pad = (job.slots < 0).tolist()
        reads = [k for s, k in zip(spans, keys, strict=True) if not all(pad[s.start : s.end])]
        return spans, keys, reads

    def _fetch(
        self,
        job: LoadJob,
        chunks: tuple[list[ChunkSpan], list[str], list[str]],
        ahead: ReadAhead,
    ) -> _Fetched:
        """The stored prefix of ``job`` in host memory, as ``CacheEngine.retrieve`` finds it.

        ``chunks`` is :meth:`_chunks` of ``job``; its chunks are read through ``ahead``.
        """
        eng = self.engine
        t0 = time.perf_counter()
        m = eng.metrics
        m.requests.labels(op="retrieve").inc()
        n = len(job.tokens)
        m.retrieve_requested_tokens.inc(n)
        spans, keys, _ = chunks
        storage = eng.storage
        out = _Fetched()
        min_tokens = int(eng.config.get("min_retrieve_tokens"))
        if min_tokens > 0:
            hit = storage.lookup_prefix(keys)
            if (spans[hit - 1].end if hit else 0) < min_tokens:
                m.miss_chunks.inc(len(spans))
                out.reason = "below min_retrieve_tokens"
                return out
            spans, keys = spans[:hit], keys[:hit]
        pad = (job.slots < 0).tolist()
        paged = self.caches.paged
        try:
            for idx, (span, key) in enumerate(zip(spans, keys, strict=True)):
                if all(pad[span.start : span.end]):  # vLLM holds these tokens: presence only
                    if not storage.contains(key):
                        break
                    out.loaded = span.end
                    continue
                got = ahead.get(key)
                if got is None:
                    storage.mark_suspect(keys[idx:])  # the next store rewrites them
                    break
                buf, tier = got
                shape = paged.chunk_shape(span.num_tokens)
                if tuple(buf.tensor.shape) != shape or buf.tensor.dtype != paged.dtype:
                    logger.warning(
                        "layer-wise load: chunk %s from %s has shape %s %s, expected %s %s; "
                        "dropped",
                        key,
                        tier,
                        tuple(buf.tensor.shape),
                        buf.tensor.dtype,
                        shape,
                        paged.dtype,
                    )
                    buf.unref()
                    m.rejected_chunks.inc()
                    storage.remove(key)
                    break
                out.chunks.append((span, buf, tier))
                out.loaded = span.end
        except BaseException:
            for _, buf, _ in out.chunks:
                buf.unref()
            raise
        hit_chunks = sum(1 for s in spans if s.end <= out.loaded)
        m.miss_chunks.inc(len(spans) - hit_chunks)
        for span, buf, tier in out.chunks:
            m.hit_chunks.labels(tier=tier).inc()
            m.retrieved_tokens.labels(tier=tier).inc(span.num_tokens)
            m.retrieved_bytes.labels(tier=tier).inc(buf.nbytes)
        m.observe_op("retrieve", time.perf_counter() - t0, out.loaded)
        return out
