"""A store split in two: the copy out of the paged cache, then the puts into the tiers.

:meth:`~lmcache_native.engine.CacheEngine.stage_store` checks which chunks storage lacks, takes
a pool buffer for each and copies them out of vLLM's blocks in one native gather; the
:class:`StagedStore` it returns holds the filled buffers. Once it is returned, the paged cache
may be overwritten (after a CUDA copy made with ``blocking=False``: once ``copy_done()``).
:meth:`~lmcache_native.engine.CacheEngine.commit_store` then puts the buffers into the tiers,
from any thread. ``CacheEngine.store`` is the two in a row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lmcache_native.engine.keys import ChunkSpan
from lmcache_native.storage.base import ChunkBufferLike

if TYPE_CHECKING:
    from lmcache_native.engine.transfer import CopyRequest


class PendingCopy(Protocol):
    """A copy into a staged store's buffers that may still be running (``ops.CopyHandle``)."""

    def done(self) -> bool:
        """Whether the copy finished (never blocks)."""

    def wait(self) -> None:
        """Blocks until the copy finished; raises what it failed with."""


@dataclass
class StoreOutcome:
    """What a store wrote: tokens stored, chunks not written, and why not (first reason)."""

    stored_tokens: int = 0
    skipped: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class StagedChunk:
    """One chunk a staged store puts: its span, key, whether to rewrite lower tiers, buffer."""

    span: ChunkSpan
    key: str
    rewrite: bool
    buf: ChunkBufferLike


@dataclass
class StagedStore:
    """A store copied out of the paged cache whose puts into the tiers are still to do.

    Attributes:
        num_tokens: tokens the store was asked for.
        chunks: the chunks to put, each buffer holding one reference (dropped by the commit).
        outcome: what the store did so far: chunks skipped (already stored, or not stored for
            ``outcome.reason``), tokens put while staging (the pool ran out mid-batch).
        stop: ``(reason, chunks)`` not stored after ``chunks``, or ``None``.
        copies: copies that may still be filling the buffers (waited for before the puts).
        note: the result's reason when the store has no other (``unfull chunk not saved``).
        seconds: time spent staging.
        source: the checked request, for a copy made later (``CacheEngine.fill_store``).
    """

    num_tokens: int
    chunks: list[StagedChunk] = field(default_factory=list)
    outcome: StoreOutcome = field(default_factory=StoreOutcome)
    stop: tuple[str, int] | None = None
    copies: list[PendingCopy] = field(default_factory=list)
    note: str | None = None
    seconds: float = 0.0
    source: CopyRequest | None = None

    @property
    def buffers(self) -> Sequence[ChunkBufferLike]:
        """The chunk buffers to fill, in chunk order."""
        return [c.buf for c in self.chunks]

    def copy_done(self) -> bool:
        """Whether every copy out of the paged cache finished (its blocks may be reused)."""
        return all(c.done() for c in self.copies)


def wait_copies(copies: Sequence[PendingCopy]) -> None:
    """Waits for each of ``copies`` (raising the first failure)."""
    for c in copies:
        c.wait()


class KeyClaims:
    """The keys staged stores are about to put: another store skips them (one copy each)."""

    def __init__(self) -> None:
        """No key claimed."""
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, key: str) -> bool:
        """Marks ``key`` as being stored; ``False`` when another staged store has it."""
        with self._lock:
            if key in self._keys:
                return False
            self._keys.add(key)
            return True

    def unclaim(self, keys: Sequence[str]) -> None:
        """Lets ``keys`` go (put, or dropped)."""
        with self._lock:
            self._keys.difference_update(keys)

    def drop(self, batch: Sequence[StagedChunk]) -> None:
        """Drops ``batch``'s buffer references and the claims on its keys."""
        for c in batch:
            c.buf.unref()
        self.unclaim([c.key for c in batch])

    def guarded(
        self, batch: list[StagedChunk], run: Callable[[], object], staged: StagedStore | None = None
    ) -> None:
        """Runs ``run``; on an error drops ``batch`` (emptying ``staged``) and raises."""
        try:
            run()
        except BaseException:
            if staged is not None:
                staged.chunks = []
            self.drop(batch)
            raise
