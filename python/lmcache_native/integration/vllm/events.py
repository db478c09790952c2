"""``BlockStored`` / ``BlockRemoved`` events for the chunks the worker stores (see :mod:`.stats`).

Before a store, :meth:`KVEventLog.watch` notes which of its chunks the first tier a store writes
already holds; after it, :meth:`KVEventLog.stored` turns the chunks it newly wrote into
``BlockStored`` events. :meth:`KVEventLog.take` adds ``BlockRemoved`` for reported chunks that
left their tier and hands the events over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_events import BlockRemoved, BlockStored

from lmcache_native.engine.keys import ChunkSpan, KeyExtras
from lmcache_native.integration.vllm.stats import MEDIUMS, LMCacheNativeKVEvents

if TYPE_CHECKING:
    from vllm.distributed.kv_events import KVCacheEvent

    from lmcache_native.engine import CacheEngine

_REPORTED_MAX = 65536  # stored chunks followed for BlockRemoved events


@dataclass
class StoreWatch:
    """A tier's index before a store: which of the store's chunks it already held."""

    tier: Any
    parent: bytes | None  # the chain hash before the first chunk
    spans: list[ChunkSpan]
    keys: list[str]
    had: list[bool]


class KVEventLog:
    """The KV events of one worker, and the stored chunks it follows for ``BlockRemoved``.

    Args:
        enabled: vLLM's ``kv_events_config.enable_kv_cache_events``.
    """

    def __init__(self, enabled: bool) -> None:
        """Starts with no events."""
        self.enabled = enabled
        self._events: list[KVCacheEvent] = []
        # key -> (chunk hash bytes, tier name) of chunks stored and reported, newest last
        self._reported: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._tier_marks: dict[str, tuple[int, int]] = {}

    def watch(
        self,
        engine: CacheEngine,
        tokens: Sequence[int],
        extras: KeyExtras | None,
        begin: int,
        prev_hash: str | None,
    ) -> StoreWatch:
        """Before a store of ``tokens`` (at ``begin``): the tier, the chunks, which it holds."""
        tier = engine.store_tier()
        parent = bytes.fromhex(prev_hash) if prev_hash else None
        spans = engine.chunk_spans(tokens, extras, offset=begin, prev_hash=prev_hash)
        if tier is None or not spans:
            return StoreWatch(tier, parent, [], [], [])
        keys = engine.span_keys(spans)
        return StoreWatch(tier, parent, spans, keys, tier.batched_contains(keys))

    def stored(
        self,
        watch: StoreWatch,
        tokens: Sequence[int],
        extras: KeyExtras | None,
        stored: int,
        offset: int = 0,
    ) -> None:
        """``BlockStored`` for the chunks the store just wrote.

        Those the tier lacked, in order, as far as the stored token count reaches. ``tokens``
        start at request position ``offset``.
        """
        tier = watch.tier
        if tier is None or stored <= 0:
            return
        medium = MEDIUMS.get(tier.name, tier.name)
        parent = watch.parent
        left = stored
        for span, key, present in zip(watch.spans, watch.keys, watch.had, strict=True):
            h = bytes.fromhex(span.chunk_hash)
            if not present and left >= span.num_tokens:
                left -= span.num_tokens
                self._events.append(
                    BlockStored(
                        block_hashes=[h],
                        parent_block_hash=parent,
                        token_ids=[int(t) for t in tokens[span.start - offset : span.end - offset]],
                        block_size=span.num_tokens,
                        lora_id=extras.lora_id if extras is not None else None,
                        medium=medium,
                        lora_name=extras.lora_name if extras is not None else None,
                    )
                )
                self._reported[key] = (h, tier.name)
                self._reported.move_to_end(key)
                if len(self._reported) > _REPORTED_MAX:
                    self._reported.popitem(last=False)
            parent = h

    def _removed(self, engine: CacheEngine | None) -> None:
        """``BlockRemoved`` for reported chunks their tier no longer holds.

        A tier is asked only when its evictions or size went down since the last check.
        """
        if engine is None or not self._reported:
            return
        by_tier: dict[str, list[str]] = {}
        for key, (_, name) in self._reported.items():
            by_tier.setdefault(name, []).append(key)
        for name, keys in by_tier.items():
            try:
                tier = engine.backend(name)
            except Exception:  # a tier that went away
                continue
            st = tier.stats()
            mark = (int(st.get("evictions", 0)), int(st.get("num_chunks", 0)))
            old = self._tier_marks.get(name)
            self._tier_marks[name] = mark
            if old is not None and mark[0] == old[0] and mark[1] >= old[1]:
                continue
            gone = [
                k for k, held in zip(keys, tier.batched_contains(keys), strict=True) if not held
            ]
            if not gone:
                continue
            hashes: list[bytes | int] = [self._reported.pop(k)[0] for k in gone]
            self._events.append(BlockRemoved(block_hashes=hashes, medium=MEDIUMS.get(name, name)))

    def take(self, engine: CacheEngine | None) -> LMCacheNativeKVEvents | None:
        """The events since the last call (``None`` when there are none or events are off)."""
        if not self.enabled:
            return None
        self._removed(engine)
        if not self._events:
            return None
        events, self._events = self._events, []
        return LMCacheNativeKVEvents(num_workers=1, events=events)
