"""Layer-wise saves of the vLLM connector (``use_layerwise: true``, LMCache's key).

vLLM calls ``save_kv_layer`` right after each attention layer of the forward has written its
KV. With ``use_layerwise`` on, the connector plans the step's stores at the first such call
(``CacheEngine.stage_store`` without its copy: chunk keys, which chunks storage lacks, a pool
buffer for each) and then copies every layer's rows of those chunks out of vLLM's cache as soon
as that layer is written: one native gather of that layer alone (``ops.paged_kv_gather``) into
layer-major rows, then one native scatter of the rows into the chunk buffers' layer views. On
CUDA the gather is only enqueued (``blocking=False``) and the scatter waits for the commit.
``wait_for_save`` commits the filled buffers (``CacheEngine.commit_store``, the same commit as a
whole-forward store), on the forward thread or, with ``enable_async_saving``, on the background
save thread. Chunk keys, chunk buffers
(``[num_kv, num_layers, num_tokens, row]``) and checksums are the same in both modes, so a
prefix stored layer-wise loads with ``use_layerwise`` off and the reverse.

Layer-wise loads are in :mod:`.layerwise_load`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lmcache_native import ops
from lmcache_native.engine import CacheEngine
from lmcache_native.engine.keys import KeyExtras
from lmcache_native.engine.metadata import StoreResult
from lmcache_native.engine.staged import StagedStore

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

    def stage(
        self, engine: CacheEngine, *, copy: bool = True, blocking: bool = True
    ) -> StagedStore:
        """``engine.stage_store`` of this job (``copy`` and ``blocking`` as there)."""
        return engine.stage_store(
            self.tokens,
            self.slots,
            self.extras,
            offset=self.offset,
            prev_hash=self.prev_hash,
            copy=copy,
            blocking=blocking,
        )


@dataclass
class _Group:
    """The step's chunks of one token count, filled together one layer at a time."""

    num_tokens: int  # per chunk
    bufs: list[torch.Tensor] = field(default_factory=list)
    slots: list[torch.Tensor] = field(default_factory=list)
    rows: torch.Tensor | None = None  # [num_layers, num_kv, len(bufs) * num_tokens, row]
    slot_map: torch.Tensor | None = None

    def relayout(self, caches: LayerCaches, layer: int) -> None:
        """Scatters ``layer``'s copied-out rows into the chunk buffers' layer views (CPU)."""
        assert self.rows is not None  # set by ``LayerwiseSaver.begin``
        views, layout = caches.chunk_layer_views(self.bufs, layer)
        chunk = self.rows[layer].view(caches.paged.num_kv, len(self.bufs), self.num_tokens, -1)
        ops.paged_kv_scatter(chunk, views, torch.arange(self.num_tokens), layout)


class _StepCopies:
    """A step's per-layer copies out of a CUDA cache, still in flight (a ``PendingCopy``).

    Each layer's copy into the staging rows is only enqueued (``blocking=False``);
    :meth:`wait`, called by the commit of the step's first store just before the puts read
    the chunk buffers, waits for them and lays the rows out into the buffers, then gives the
    staging buffer back for a later step.
    """

    def __init__(self, caches: LayerCaches, staging: Staging, free: list[Staging]) -> None:
        """No copies yet; ``staging`` goes back to ``free`` once they are done."""
        self._caches = caches
        self._staging = staging
        self._free = free
        self._pending: list[tuple[ops.CopyHandle, _Group, int]] = []
        self._lock = threading.Lock()
        self._finished = False
        self._error: BaseException | None = None
        self.taken = False  # a staged store commits after :meth:`wait`

    def add(self, handle: ops.CopyHandle, group: _Group, layer: int) -> None:
        """A layer's copy of ``group`` in flight."""
        self._pending.append((handle, group, layer))

    @property
    def pending(self) -> bool:
        """Whether copies were added and not waited for."""
        return bool(self._pending)

    def done(self) -> bool:
        """Whether every copy out of vLLM's cache finished (never blocks)."""
        return all(h.done() for h, _, _ in self._pending)

    def wait(self, relayout: bool = True) -> None:
        """Waits for the copies and (``relayout``) fills the chunk buffers; once.

        Raises:
            IndexError: a bad slot (every later call raises it again).
        """
        with self._lock:
            if not self._finished:
                self._finished = True
                pending, self._pending = self._pending, []
                try:
                    for handle, group, layer in pending:
                        handle.wait()
                        if relayout:
                            group.relayout(self._caches, layer)
                except BaseException as e:
                    self._error = e
                finally:
                    self._free.append(self._staging)
        if self._error is not None:
            raise self._error


class LayerwiseSaver:
    """Copies a step's chunks to store out of vLLM's cache layer by layer, commits them after.

    One saver per worker; one step at a time: :meth:`begin` (before the first layer is saved)
    stages the step's stores (``CacheEngine.stage_store`` without a copy: keys, the chunks
    storage lacks, a pool buffer for each), :meth:`save_layer` copies that layer of every
    staged chunk into its buffer (a native gather out of vLLM's cache into layer-major rows,
    then a native scatter into the buffers' layer views; on CUDA the gather is only enqueued
    and the scatter waits for the commit), :meth:`take` hands a job's staged store over for
    ``CacheEngine.commit_store`` (now, or on another thread), :meth:`store` does both, and
    :meth:`end` lets the buffers of stores not taken go.

    Args:
        engine: the worker's engine (keys, tiers, metrics).
        caches: the caches the engine registered.
    """

    def __init__(self, engine: CacheEngine, caches: LayerCaches) -> None:
        """A saver with no step begun."""
        self.engine = engine
        self.caches = caches
        self._staged: dict[int, StagedStore] = {}  # id(job) -> its staged store
        self._jobs: list[StoreJob] = []  # keeps the ids above valid
        self._groups: list[_Group] = []
        # Staging rows not in use; a step whose CUDA copies are in flight holds its own.
        self._free: list[Staging] = []
        self._step: _StepCopies | None = None
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
        """Stages ``jobs``: which chunks each stores (stored chunks and padding are left out).

        Nothing is copied yet; :meth:`save_layer` copies each layer of the staged chunks.
        """
        self.end()
        eng = self.engine
        groups: dict[int, _Group] = {}
        self._jobs = list(jobs)
        for job in jobs:
            staged = job.stage(eng, copy=False)
            self._staged[id(job)] = staged
            for c in staged.chunks:
                g = groups.setdefault(c.span.num_tokens, _Group(c.span.num_tokens))
                g.bufs.append(c.buf.tensor)
                g.slots.append(job.slots[c.span.start : c.span.end])
        self._groups = list(groups.values())
        p = self.caches.paged
        staging = self._free.pop() if self._free else Staging(self.caches)
        self._step = _StepCopies(self.caches, staging, self._free)
        per_token = p.num_layers * p.num_kv * p.row_elems
        flat = staging.flat(self.planned_tokens * per_token)
        offset = 0
        for g in self._groups:
            n = len(g.bufs) * g.num_tokens
            g.rows = flat[offset : offset + n * per_token].view(
                p.num_layers, p.num_kv, n, p.row_elems
            )
            # NOTE: on CUDA the slots go to the device once, not with every layer's copy.
            g.slot_map = torch.cat(g.slots).to(p.device)
            offset += n * per_token
        self._captured = [False] * self.caches.num_layers

    def save_layer(self, layer_name: str) -> bool:
        """Copies ``layer_name``'s rows of the staged chunks out of vLLM's cache.

        On the CPU the rows are in the chunk buffers when it returns; on CUDA the copy is
        only enqueued on the current stream and the commit finishes it (:class:`_StepCopies`).

        Returns:
            Whether the layer belongs to the step (an unknown layer, or no step begun: no-op).
        """
        i = self.caches.index.get(layer_name)
        step = self._step
        if i is None or not self._captured or step is None:
            return False
        c = self.caches
        for g in self._groups:
            assert g.rows is not None  # set by begin
            assert g.slot_map is not None
            handle = ops.paged_kv_gather(
                [c.caches[i]], g.slot_map, g.rows[i].unsqueeze(1), c.layout, blocking=False
            )
            if c.paged.device.type == "cpu":
                g.relayout(c, i)
            else:
                step.add(handle, g, i)
        self._captured[i] = True
        self.layers_saved += 1
        return True

    def take(self, job: StoreJob) -> StagedStore:
        """``job``'s staged store, for ``CacheEngine.commit_store`` (now or on another thread).

        Its copies out of vLLM's cache may still be in flight on CUDA (``copy_done``). A job
        that was not staged by :meth:`begin` is staged now, and one of a step whose forward
        did not save every layer is copied out of vLLM's cache now (the same chunks).
        """
        eng = self.engine
        staged = self._staged.pop(id(job), None)
        if staged is None:
            return job.stage(eng, blocking=False)
        step = self._step
        if not self.complete:
            eng.fill_store(staged)
        elif staged.chunks:
            nbytes = sum(b.nbytes for b in staged.buffers)
            eng.metrics.copy_bytes.labels(direction="gather").inc(nbytes)
            if step is not None and step.pending:
                step.taken = True
                staged.copies.append(step)
        return staged

    def store(self, job: StoreJob) -> StoreResult:
        """Stores ``job`` like ``CacheEngine.store`` would, from the copied-out layers."""
        return self.engine.commit_store(self.take(job))

    def end(self) -> None:
        """Forgets the step (the buffers of stores not taken go back to the pool)."""
        for staged in self._staged.values():
            self.engine.release_store(staged)
        self._staged.clear()
        step, self._step = self._step, None
        if step is not None and not step.taken:
            # NOTE: copies nobody commits may still write the staging rows: wait before reuse.
            try:
                step.wait(relayout=False)
            except Exception as e:  # a bad slot: the stores were dropped anyway
                logger.debug("layer-wise save: a dropped copy failed: %r", e)
        self._jobs = []
        self._groups = []
        self._captured = []
