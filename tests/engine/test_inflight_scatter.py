"""A retrieve's host buffers stay held until its (CUDA, non-blocking) scatter has run.

No GPU here: the scatter is the real CPU kernel, but its handle reports "not done" until the
test says so, as a CUDA copy still queued on the stream would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lmcache_native import ops
from lmcache_native.engine import inflight, transfer

from tests.engine.conftest import MakeEngine, random_cache, read_rows, same_bytes

TOKENS = list(range(9000, 9064))  # 4 chunks of 16


class QueuedHandle:
    """A copy handle that is done only once ``run`` is set (and counts its waits)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        state["handles"].append(self)
        self.waited = False

    def done(self) -> bool:
        return bool(self.state["run"])

    def wait(self) -> None:
        self.waited = True


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"run": False, "handles": []}
    real = ops.paged_kv_scatter_chunks

    def scatter(*args: Any, **kwargs: Any) -> QueuedHandle:
        assert kwargs.get("blocking") is False  # the engine never blocks on its scatter
        real(*args, **kwargs)
        return QueuedHandle(state)

    monkeypatch.setattr(transfer.ops, "paged_kv_scatter_chunks", scatter)
    return state


def _used(e: Any) -> int:
    return int(e.metrics.value("lmcache_pool_used_bytes"))


def _engine(make_engine: MakeEngine, tmp_path: Path, seed: int, **cfg: Any) -> Any:
    e = make_engine(random_cache(seed), local_cpu=False, local_disk=str(tmp_path / "d"), **cfg)
    for n in (32, 64):  # half at a time: the small pool of one test holds about two chunks
        e.store(TOKENS[:n], torch.arange(n))
        assert e.flush(timeout=30)
    assert e.lookup(TOKENS) == 64
    assert _used(e) == 0
    return e


def test_buffers_are_held_until_the_scatter_has_run(
    make_engine: MakeEngine, tmp_path: Path, queued: dict[str, Any]
) -> None:
    e = _engine(make_engine, tmp_path, 51)
    dst = torch.arange(128, 192)
    assert e.retrieve(TOKENS, dst).num_retrieved == 64
    assert _used(e) > 0  # the copy "still reads" its four chunk buffers
    queued["run"] = True
    assert e.retrieve(TOKENS, torch.arange(192, 256)).num_retrieved == 64  # reaps the first
    assert queued["handles"][0].waited
    cache = dict(zip(e.registered_kv().names, e.registered_kv().caches, strict=True))
    assert same_bytes(read_rows(cache, dst), read_rows(cache, torch.arange(64)))


def test_close_waits_for_every_scatter(
    make_engine: MakeEngine, tmp_path: Path, queued: dict[str, Any]
) -> None:
    e = _engine(make_engine, tmp_path, 52)
    assert e.retrieve(TOKENS, torch.arange(128, 192)).num_retrieved == 64
    e.close()
    assert [h.waited for h in queued["handles"]] == [True]
    assert _used(e) == 0


def test_a_short_pool_waits_for_earlier_scatters_instead_of_missing(
    make_engine: MakeEngine, tmp_path: Path, queued: dict[str, Any]
) -> None:
    # Room for about two of the four chunks: the second retrieve only fits once the first
    # retrieve's buffers are given back, which needs its (queued) scatter to be waited for.
    chunk = 2 * 2 * 16 * 2 * 16 * 2  # kv x layers x tokens x heads x head_size x bf16 bytes
    e = _engine(make_engine, tmp_path, 53, max_local_cpu_size=2.5 * chunk / 2**30)
    assert e.retrieve(TOKENS, torch.arange(128, 192)).num_retrieved == 64
    assert e.retrieve(TOKENS, torch.arange(192, 256)).num_retrieved == 64
    assert queued["handles"][0].waited


def test_in_flight_copies_release_in_order_of_completion() -> None:
    class Buf:
        def __init__(self) -> None:
            self.refs = 1

        def unref(self) -> None:
            self.refs -= 1

    state: dict[str, Any] = {"run": False, "handles": []}
    copies = inflight.InFlightCopies()
    a, b = Buf(), Buf()
    copies.add(QueuedHandle(state), [a, b])  # type: ignore[arg-type, list-item]
    assert (copies.pending(), a.refs, b.refs) == (1, 1, 1)
    assert copies.reap() == 0
    state["run"] = True
    assert copies.reap() == 1
    assert (copies.pending(), a.refs, b.refs) == (0, 0, 0)


def test_a_copy_finishing_during_a_reap_is_released_or_kept_never_lost() -> None:
    class Buf:
        def __init__(self) -> None:
            self.refs = 1

        def unref(self) -> None:
            self.refs -= 1

    class FinishesWhileAsked:
        """Not done at the first question, done from the second on (the copy ran meanwhile)."""

        def __init__(self) -> None:
            self.asked = 0

        def done(self) -> bool:
            self.asked += 1
            return self.asked > 1

        def wait(self) -> None:
            pass

    copies = inflight.InFlightCopies()
    buf = Buf()
    handle = FinishesWhileAsked()
    with copies._lock:  # added as in flight (its first question answered "not done")
        copies._items.append((handle, [buf]))  # type: ignore[arg-type]
    released = copies.reap()
    assert released + copies.pending() == 1  # released now, or still listed for later
    copies.reap(wait=True)
    assert buf.refs == 0
