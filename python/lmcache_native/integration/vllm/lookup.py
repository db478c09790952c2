"""How vLLM's scheduler asks the workers' engines which prefix of a prompt they hold.

In vLLM's default mode the scheduler runs in the engine-core process and each worker in its own
process; the stored chunks live in the workers' engines. Each worker therefore serves lookups on
a Unix socket named after vLLM's ``engine_id`` and the worker's rank, and the scheduler asks every
rank and takes the shortest answer (a chunk counts only if every rank can load its shard).

When the scheduler and the worker share a process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), the
worker also registers its engine in a process-local table and the client calls it directly.

Wire format (little-endian), one request and one reply per round trip on a kept-open connection::

    request   u32 magic "LMC2" | u32 num_tokens | u32 req_id_len | u32 extras_len
              | num_tokens * i64 token ids | req_id (UTF-8) | extras (UTF-8 JSON, may be empty)
    reply     i64 hit_tokens   | i64 min_retrieve_tokens | i64 below_cpu

``below_cpu`` is 1 when some chunk of the hit is listed only below the CPU tier (disk, Redis,
``fs://``), so its load reads storage (the scheduler may then load it asynchronously).

``req_id`` names the request whose lookup this is (the worker holds the chunks it reported for
that request until its load); ``extras`` are the request's key extras
(:class:`~lmcache_native.engine.keys.KeyExtras`: cache salt, LoRA adapter, multimodal items).

The reply carries the worker's current ``min_retrieve_tokens`` so that a runtime change through
the worker's admin API reaches the scheduler's decision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcache_native.engine.keys import KeyExtras

logger = logging.getLogger("lmcache_native.integration.vllm")

_MAGIC = 0x32434D4C  # "LMC2"
_REQ = struct.Struct("<IIII")
_REPLY = struct.Struct("<qqq")
# NOTE: bounds one request (a prompt of 16M tokens); larger is a protocol error, not a prompt.
MAX_LOOKUP_TOKENS = 1 << 24
MAX_LOOKUP_TEXT = 1 << 20  # request id and extras, bytes each

#: Signature of what a worker answers: (request id, token ids, key extras) -> (hit tokens,
#: min_retrieve_tokens[, below_cpu]). Token ids come as a list in-process, as an int64 array
#: over the socket. (Typed ``Any`` so that functions taking either form fit.)
LookupFn = Callable[[str, Any, KeyExtras | None], tuple[int, ...]]


def _answer(reply: tuple[int, ...]) -> tuple[int, int, bool]:
    """A worker's answer as (hit tokens, min_retrieve_tokens, below_cpu)."""
    return int(reply[0]), int(reply[1]), bool(reply[2]) if len(reply) > 2 else False


_local_lock = threading.Lock()
_local: dict[tuple[str, int], LookupFn] = {}


def socket_path(engine_id: str, rank: int) -> str:
    """The Unix socket path of one worker's lookup server.

    ``LMCACHE_NATIVE_LOOKUP_DIR`` chooses the directory (default: the system temp directory).
    """
    base = os.environ.get("LMCACHE_NATIVE_LOOKUP_DIR") or tempfile.gettempdir()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in engine_id)[:48]
    return os.path.join(base, f"lmcn-{safe}-{rank}.sock")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("peer closed the connection")
        got += k
    return bytes(buf)


@dataclass
class LookupServer:
    """Answers lookups for one worker on a Unix socket, from a daemon thread.

    Attributes:
        path: the socket path.
    """

    path: str
    _fn: LookupFn
    _sock: socket.socket
    _thread: threading.Thread
    _key: tuple[str, int]
    _stop: threading.Event
    _conns: dict[socket.socket, threading.Thread]
    _conns_lock: threading.Lock

    @classmethod
    def start(cls, engine_id: str, rank: int, fn: LookupFn) -> LookupServer:
        """Binds the socket, registers ``fn`` for in-process clients, and starts serving.

        Args:
            engine_id: vLLM's ``kv_transfer_config.engine_id`` (the same in scheduler and workers).
            rank: the worker's rank among the workers of this engine.
            fn: the lookup to answer with.

        Raises:
            OSError: the socket cannot be bound.
        """
        path = socket_path(engine_id, rank)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        key = (engine_id, rank)
        server = cls(
            path=path,
            _fn=fn,
            _sock=sock,
            _thread=threading.Thread(target=lambda: None),
            _key=key,
            _stop=threading.Event(),
            _conns={},
            _conns_lock=threading.Lock(),
        )
        server._thread = threading.Thread(
            target=server._serve, name=f"lmcn-lookup-{rank}", daemon=True
        )
        server._thread.start()
        with _local_lock:
            _local[key] = fn
        return server

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._conns_lock:
                if self._stop.is_set():
                    conn.close()
                    return
                t = threading.Thread(
                    target=self._handle, args=(conn,), name="lmcn-lookup-conn", daemon=True
                )
                self._conns[conn] = t
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while True:
                magic, n, n_id, n_extras = _REQ.unpack(_recv_exact(conn, _REQ.size))
                if (
                    magic != _MAGIC
                    or n > MAX_LOOKUP_TOKENS
                    or n_id > MAX_LOOKUP_TEXT
                    or n_extras > MAX_LOOKUP_TEXT
                ):
                    logger.warning("lookup server %s: bad request header, closing", self.path)
                    return
                # NOTE: handed on as an array: the engine hashes it as is (a list costs ~1 ms
                # more for a 32K-token prompt).
                tokens = np.frombuffer(_recv_exact(conn, 8 * n), dtype="<i8")
                req_id = _recv_exact(conn, n_id).decode("utf-8", "replace")
                raw_extras = _recv_exact(conn, n_extras)
                try:
                    extras = KeyExtras.from_dict(json.loads(raw_extras)) if raw_extras else None
                    hit, min_retrieve, below = _answer(self._fn(req_id, tokens, extras))
                except Exception:
                    logger.exception("lookup failed; answering 0 tokens")
                    hit, min_retrieve, below = 0, 0, False
                conn.sendall(_REPLY.pack(hit, min_retrieve, int(below)))
        except (ConnectionError, OSError):
            return
        except Exception:
            logger.exception("lookup server %s: connection failed", self.path)
            return
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
            conn.close()

    @property
    def thread(self) -> threading.Thread:
        """The thread accepting connections."""
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stops serving, closes every connection, removes the socket file."""
        with _local_lock:
            if _local.get(self._key) is self._fn:
                del _local[self._key]
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout)
        with self._conns_lock:
            conns = list(self._conns.items())
            self._conns.clear()
        for c, t in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            t.join(timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class LookupClient:
    """The scheduler's view of all workers' engines of one vLLM engine.

    Args:
        engine_id: vLLM's ``kv_transfer_config.engine_id``.
        world_size: number of workers (tensor x pipeline parallel ranks).
        timeout: seconds to wait for a worker's answer; a worker that does not answer is a miss.
    """

    def __init__(self, engine_id: str, world_size: int, timeout: float = 10.0) -> None:
        self.engine_id = engine_id
        self.world_size = world_size
        self.timeout = timeout
        self._socks: dict[int, socket.socket] = {}
        self._warned: set[int] = set()

    def _remote(
        self, rank: int, req_id: str, tokens: Sequence[int], extras: KeyExtras | None
    ) -> tuple[int, int, int]:
        sock = self._socks.get(rank)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(socket_path(self.engine_id, rank))
            except OSError:
                sock.close()
                raise
            self._socks[rank] = sock
        payload = np.asarray(tokens, dtype="<i8").tobytes()
        rid = req_id.encode("utf-8")
        ex = b"" if extras is None or extras.empty else json.dumps(extras.to_dict()).encode()
        try:
            sock.sendall(_REQ.pack(_MAGIC, len(tokens), len(rid), len(ex)) + payload + rid + ex)
            hit, min_retrieve, below = _REPLY.unpack(_recv_exact(sock, _REPLY.size))
        except OSError:
            self._socks.pop(rank, None)
            sock.close()
            raise
        return hit, min_retrieve, below

    def lookup(
        self, tokens: Sequence[int], req_id: str = "", extras: KeyExtras | None = None
    ) -> tuple[int, int]:
        """The prefix (in tokens) that every worker holds, and the largest min_retrieve_tokens.

        See :meth:`lookup_tiers`, which also tells whether the hit reads storage.
        """
        hit, min_retrieve, _ = self.lookup_tiers(tokens, req_id, extras)
        return hit, min_retrieve

    def lookup_tiers(
        self, tokens: Sequence[int], req_id: str = "", extras: KeyExtras | None = None
    ) -> tuple[int, int, bool]:
        """What every worker holds of a prompt, and from which tiers.

        Returns the prefix (in tokens) that every worker holds, the largest
        min_retrieve_tokens, and whether some worker's hit has a chunk listed only below its CPU
        tier.

        Args:
            tokens: the prompt's token ids.
            req_id: the request asking (workers hold what they report for it until its load).
            extras: the request's key extras.

        A worker that cannot be reached, or that fails, counts as holding nothing (logged once
        per rank).
        """
        hit: int | None = None
        min_retrieve = 0
        below = False
        for rank in range(self.world_size):
            with _local_lock:
                fn = _local.get((self.engine_id, rank))
            try:
                h, m, b = _answer(
                    fn(req_id, tokens, extras)
                    if fn is not None
                    else self._remote(rank, req_id, tokens, extras)
                )
            except Exception as e:
                if rank not in self._warned:
                    self._warned.add(rank)
                    logger.warning(
                        "lookup: worker %d of engine %s unreachable (%s); treating as a miss",
                        rank,
                        self.engine_id,
                        e,
                    )
                return 0, 0, False
            hit = h if hit is None else min(hit, h)
            min_retrieve = max(min_retrieve, m)
            below = below or b
        return hit or 0, min_retrieve, below

    def close(self) -> None:
        """Closes the connections."""
        for s in self._socks.values():
            with contextlib.suppress(OSError):
                s.close()
        self._socks.clear()
