"""Layer-wise saves of the vLLM connector (``use_layerwise: true``, LMCache's key).

vLLM calls ``save_kv_layer`` right after each attention layer of the forward has written its
KV. With ``use_layerwise`` on, the connector plans the step's stores at the first such call
(chunk hashes and keys, which chunks the hot tier already holds, a pool buffer for each chunk
to store) and then copies every layer's rows of those chunks out of vLLM's cache as soon as
that layer is written: one native gather of that layer alone (``ops.paged_kv_gather``) into
layer-major rows, then one native scatter of the rows into the chunk buffers' layer views.
``wait_for_save`` only puts the filled buffers into the tiers. Chunk keys, chunk buffers
(``[num_kv, num_layers, num_tokens, row]``) and checksums are the same in both modes, so a
prefix stored layer-wise loads with ``use_layerwise`` off and the reverse.

Layer-wise loads are in :mod:`.layerwise_load`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lmcache_native import ops
from lmcache_native.engine import CacheEngine
from lmcache_native.engine.keys import ChunkSpan, KeyExtras
from lmcache_native.engine.metadata import StoreResult
from lmcache_native.storage.base import ChunkBufferLike

logger = logging.getLogger("lmcache_native.integration.vllm")


@dataclass(frozen=True)
class LayerCaches:
    """vLLM's per-layer caches as the engine registered them, addressable one layer at a time.

    Attributes:
        names: layer names in layer order.
        caches: each layer's paged cache (same order).
        layout: the caches' layout (one of ``ops.LAYOUTS``).
        paged: their description (geometry, dtype, device).
        index: layer name -> position in ``names``.
    """

    names: list[str]
    caches: list[torch.Tensor]
    layout: str
    paged: ops.PagedKV
    index: dict[str, int]

    @classmethod
    def of(cls, kv_caches: Mapping[str, torch.Tensor], layout: str) -> LayerCaches:
        """Describes ``kv_caches`` (layer name -> paged cache, in layer order) in ``layout``.

        Raises:
            ValueError / TypeError: the caches do not fit ``layout`` (from ``ops.describe``).
        """
        names = [str(n) for n in kv_caches]
        caches = list(kv_caches.values())
        return cls(
            names, caches, layout, ops.describe(caches, layout), {n: i for i, n in enumerate(names)}
        )

    @property
    def num_layers(self) -> int:
        """Layers registered."""
        return len(self.names)

    def layer_views(self, staging: torch.Tensor) -> tuple[list[torch.Tensor], str]:
        """``staging`` (from :class:`Staging`) seen as a paged cache of one-token blocks.

        Returns:
            One view per layer and its layout (``flash_attn``, or ``mla`` for one KV row), so
            the native batched copies move whole chunk buffers to and from the layer-major
            staging rows: row ``r`` of layer ``i`` is slot ``r``.
        """
        n, row = int(staging.shape[2]), self.paged.row_elems
        if self.paged.num_kv == 1:
            return [staging[i].view(n, 1, row) for i in range(self.num_layers)], "mla"
        return [staging[i].view(2, n, 1, 1, row) for i in range(self.num_layers)], "flash_attn"

    def chunk_layer_views(
        self, chunks: Sequence[torch.Tensor], layer: int
    ) -> tuple[list[torch.Tensor], str]:
        """Layer ``layer`` of each chunk buffer seen as a paged cache of one-token blocks.

        Gathering slots ``0..n-1`` from these views (one "layer" per chunk, all chunks of ``n``
        tokens) into ``[num_kv, len(chunks), n, row]`` lays that layer's rows of every chunk
        out in token order: a one-layer chunk for the whole list, in one native call.
        """
        if self.paged.num_kv == 1:
            return [c[0, layer].view(int(c.shape[2]), 1, -1) for c in chunks], "mla"
        return [c[:, layer].view(2, int(c.shape[2]), 1, 1, -1) for c in chunks], "flash_attn"


class Staging:
    """A reused layer-major buffer: ``[num_layers, num_kv, num_tokens, row]`` rows.

    ``t[i]`` viewed as ``[num_kv, 1, num_tokens, row]`` is a contiguous one-layer chunk, which
    the native copies take for a single layer. The memory is kept between steps (a fresh
    allocation pays its page faults on every step) and grows to the largest step seen; on the
    CPU for a CPU cache, pinned for a CUDA cache.

    Args:
        caches: the caches whose rows it holds.
    """

    def __init__(self, caches: LayerCaches) -> None:
        """No memory until :meth:`get`."""
        self.caches = caches
        self._flat: torch.Tensor | None = None

    def get(self, num_tokens: int) -> torch.Tensor:
        """A contiguous ``[num_layers, num_kv, num_tokens, row]`` view of the buffer."""
        p = self.caches.paged
        return self.flat(p.num_layers * p.num_kv * num_tokens * p.row_elems).view(
            p.num_layers, p.num_kv, num_tokens, p.row_elems
        )

    def flat(self, numel: int) -> torch.Tensor:
        """The first ``numel`` elements of the buffer (grown when needed)."""
        p = self.caches.paged
        if self._flat is None or self._flat.numel() < numel:
            self._flat = None
            self._flat = torch.empty(numel, dtype=p.dtype, pin_memory=p.device.type == "cuda")
        return self._flat[:numel]

    def release(self) -> None:
        """Lets the memory go."""
        self._flat = None


@dataclass
class StoreJob:
    """One store the worker hands over: the arguments it would give ``CacheEngine.store``.

    Attributes:
        tokens: token ids from request position ``offset`` on.
        slots: ``[len(tokens)]`` int64 CPU slots of those tokens in vLLM's cache (-1: padding).
        extras: the request's key extras.
        offset: request position of ``tokens[0]`` (a chunk boundary).
        prev_hash: chain hash of the chunk ending at ``offset`` (``None`` at 0).
    """

    tokens: Sequence[int]
    slots: torch.Tensor
    extras: KeyExtras | None = None
    offset: int = 0
    prev_hash: str | None = None


@dataclass
class _Planned:
    """A job's chunks, decided (and their buffers taken) before the forward writes them."""

    num_spans: int
    reason: str | None  # why nothing at all is stored (frozen, short), else None
    todo: list[tuple[ChunkSpan, str, bool, ChunkBufferLike]] = field(default_factory=list)
    # (span, key, rewrite, its chunk buffer) of each chunk to store
    skipped: int = 0  # chunks the hot tier holds
    stop: str | None = None  # why the chunks after ``todo`` are not stored
    stopped: int = 0  # chunks not stored for ``stop``


@dataclass
class _Group:
    """The step's chunks of one token count, filled together one layer at a time."""

    num_tokens: int  # per chunk
    bufs: list[torch.Tensor] = field(default_factory=list)
    slots: list[torch.Tensor] = field(default_factory=list)
    rows: torch.Tensor | None = None  # [num_layers, num_kv, len(bufs) * num_tokens, row]
    slot_map: torch.Tensor | None = None


class LayerwiseSaver:
    """Copies a step's chunks to store out of vLLM's cache layer by layer, commits them after.

    One saver per worker; one step at a time: :meth:`begin` (before the first layer is saved)
    plans the step and takes a pool buffer for each chunk to store, :meth:`save_layer` copies
    that layer of every planned chunk into its buffer (a native gather out of vLLM's cache into
    layer-major rows, then a native scatter into the buffers' layer views), :meth:`store` puts
    a job's filled buffers into the tiers, :meth:`end` lets unused buffers go.

    Args:
        engine: the worker's engine (keys, tiers, metrics).
        caches: the caches the engine registered.
    """

    def __init__(self, engine: CacheEngine, caches: LayerCaches) -> None:
        """A saver with no step begun."""
        self.engine = engine
        self.caches = caches
        self._plans: dict[int, _Planned] = {}  # id(job) -> plan
        self._jobs: list[StoreJob] = []  # keeps the ids above valid
        self._groups: list[_Group] = []
        self._buffer = Staging(caches)
        self._captured: list[bool] = []
        self.layers_saved = 0  # layers copied out (tests, logs)

    @property
    def active(self) -> bool:
        """Whether a step was begun and not ended."""
        return bool(self._captured)

    @property
    def complete(self) -> bool:
        """Whether every layer of the step was copied out."""
        return bool(self._captured) and all(self._captured)

    @property
    def planned_tokens(self) -> int:
        """Tokens of the chunks the step copies out."""
        return sum(len(g.bufs) * g.num_tokens for g in self._groups)

    def begin(self, jobs: Sequence[StoreJob]) -> None:
        """Plans ``jobs``: which chunks each stores (hot-tier hits and padding are left out).

        Nothing is copied yet; :meth:`save_layer` copies each layer of the planned chunks.
        """
        self.end()
        groups: dict[int, _Group] = {}
        for job in jobs:
            plan = self._plan(job)
            for span, _, _, buf in plan.todo:
                g = groups.setdefault(span.num_tokens, _Group(span.num_tokens))
                g.bufs.append(buf.tensor)
                g.slots.append(job.slots[span.start : span.end])
            self._plans[id(job)] = plan
        self._jobs = list(jobs)
        self._groups = list(groups.values())
        p = self.caches.paged
        per_token = p.num_layers * p.num_kv * p.row_elems
        total = sum(len(g.bufs) * g.num_tokens for g in self._groups)
        flat = self._buffer.flat(total * per_token)
        offset = 0
        for g in self._groups:
            n = len(g.bufs) * g.num_tokens
            g.rows = flat[offset : offset + n * per_token].view(
                p.num_layers, p.num_kv, n, p.row_elems
            )
            g.slot_map = torch.cat(g.slots)
            offset += n * per_token
        self._captured = [False] * self.caches.num_layers

    def _plan(self, job: StoreJob) -> _Planned:
        eng = self.engine
        n = len(job.tokens)
        spans = eng.chunk_spans(job.tokens, job.extras, job.offset, job.prev_hash)
        eng.statistics.record(s.chunk_hash for s in spans)
        if not spans:
            return _Planned(0, "shorter than chunk_size" if n else None)
        storage = eng.storage
        if storage.frozen:
            return _Planned(len(spans), "frozen")
        keys = eng.span_keys(spans)
        skip, rewrite = storage.store_plan(keys)
        plan = _Planned(len(spans), None)
        pad = (job.slots < 0).tolist()
        paged = self.caches.paged
        for i, (span, key) in enumerate(zip(spans, keys, strict=True)):
            if skip[i]:
                plan.skipped += 1
                continue
            stop = "padding slots" if any(pad[span.start : span.end]) else None
            buf = None
            if stop is None:
                buf = storage.allocate(paged.chunk_shape(span.num_tokens), paged.dtype)
                stop = "out of memory" if buf is None else None
            if buf is None:
                plan.stop, plan.stopped = stop, len(spans) - i
                break
            plan.todo.append((span, key, rewrite[i], buf))
        return plan

    def save_layer(self, layer_name: str) -> bool:
        """Copies ``layer_name``'s rows of the planned chunks out of vLLM's cache.

        Returns:
            Whether the layer belongs to the step (an unknown layer, or no step begun: no-op).
        """
        i = self.caches.index.get(layer_name)
        if i is None or not self._captured:
            return False
        c = self.caches
        for g in self._groups:
            assert g.rows is not None  # set by begin
            assert g.slot_map is not None
            ops.paged_kv_gather([c.caches[i]], g.slot_map, g.rows[i].unsqueeze(1), c.layout)
            views, layout = c.chunk_layer_views(g.bufs, i)
            chunk = g.rows[i].view(c.paged.num_kv, len(g.bufs), g.num_tokens, -1)
            ops.paged_kv_scatter(chunk, views, torch.arange(g.num_tokens), layout)
        self._captured[i] = True
        self.layers_saved += 1
        return True

    def store(self, job: StoreJob) -> StoreResult:
        """Stores ``job`` like ``CacheEngine.store`` would, from the copied-out layers.

        A job that was not planned by :meth:`begin`, or a step whose forward did not save every
        layer, is stored by ``CacheEngine.store`` from vLLM's cache (the same chunks).
        """
        eng = self.engine
        plan = self._plans.pop(id(job), None)
        if plan is None or not self.complete:
            if plan is not None:
                for *_, buf in plan.todo:
                    buf.unref()
            return eng.store(
                job.tokens, job.slots, job.extras, offset=job.offset, prev_hash=job.prev_hash
            )
        t0 = time.perf_counter()
        eng.metrics.requests.labels(op="store").inc()
        result = self._commit(job, plan)
        eng.metrics.observe_op("store", time.perf_counter() - t0, result.num_stored_tokens)
        return result

    def _commit(self, job: StoreJob, plan: _Planned) -> StoreResult:
        eng = self.engine
        n = len(job.tokens)
        m = eng.metrics
        if plan.reason is not None:
            if plan.num_spans:
                m.skipped_stores.labels(reason=plan.reason).inc(plan.num_spans)
            return StoreResult(n, 0, plan.num_spans, plan.reason)
        stored = nbytes = 0
        skipped = plan.skipped + plan.stopped
        reason: str | None = None
        try:
            for span, key, rewrite, buf in plan.todo:
                if eng.storage.put(key, buf, rewrite=rewrite):
                    stored += span.num_tokens
                    nbytes += buf.nbytes
                else:
                    reason = reason or "storage full"
                    skipped += 1
                    m.skipped_stores.labels(reason="storage full").inc()
        finally:
            for *_, buf in plan.todo:
                buf.unref()
        if stored:
            m.stored_tokens.inc(stored)
            m.stored_bytes.inc(nbytes)
            m.copy_bytes.labels(direction="gather").inc(nbytes)
        if plan.stop is not None:
            reason = reason or plan.stop
            m.skipped_stores.labels(reason=plan.stop).inc(plan.stopped)
        if plan.skipped and reason is None and stored == 0:
            reason = "already stored"
            m.skipped_stores.labels(reason=reason).inc(plan.skipped)
        if reason is None and not eng.config.get("save_unfull_chunk") and n % eng.chunk_size:
            reason = "unfull chunk not saved"
        return StoreResult(n, stored, skipped, reason)

    def end(self) -> None:
        """Forgets the step (plans, and the buffers of chunks not stored)."""
        for plan in self._plans.values():
            for *_, buf in plan.todo:
                buf.unref()
        self._plans.clear()
        self._jobs = []
        self._groups = []
        self._captured = []
