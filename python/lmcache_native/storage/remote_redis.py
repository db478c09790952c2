"""Byte-level Redis stores of the remote tier: one server, Sentinel-managed, and Redis Cluster.

Every store holds each chunk under its key as one value in the format of :mod:`.serde` (header +
checksum), so the three read each other's values and a corrupt value is always detected.
Clients use socket timeouts of ``blocking_timeout_secs`` and no client-side retries, so each call
is bounded; failures surface as :class:`redis.RedisError` and :class:`.RemoteBackend` turns them
into misses.

* :class:`RedisStore` (``redis://``, ``rediss://``, ``unix://``, ``valkey://`` standalone): any
  failure marks the whole tier down for ``retry_interval_secs``.
* :class:`RedisStore` through Sentinel (``redis-sentinel://``): reads and writes go to the
  master that the Sentinels name (reading the master keeps a chunk visible as soon as it is
  stored). During a failover calls fail, the tier answers misses, and once the Sentinels name
  the new master the next call connects to it.
* :class:`ClusterStore` (``redis-cluster://``, ``valkey://`` with ``valkey_mode: cluster``):
  keys hash to slots; batched existence checks and reads are grouped by the node owning each
  key's slot, one pipeline per node. A node that fails is skipped for ``retry_interval_secs``
  and its keys are misses, while keys on the other nodes still hit; MOVED/ASK replies (resharding,
  failover) are followed through redis-py's cluster client, which refreshes its slot map.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from lmcache_native.errors import CorruptChunkError
from lmcache_native.storage.base import Allocator, ChunkBufferLike
from lmcache_native.storage.remote_url import RemoteSpec
from lmcache_native.storage.serde import decode, encode

#: Errors that mean "the store (or one node) is unreachable or failing", never a bug here.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    RedisClusterException,
    OSError,
)

#: ``on_node_error(op, node_name, exc)``: a node failed; its keys were answered as misses.
NodeErrorHook = Callable[[str, str, BaseException], None]


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _client_kwargs(timeout_secs: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout_secs,
        "socket_connect_timeout": timeout_secs,
        "retry": _no_retry(),
        "health_check_interval": 0,
    }


def _redis_glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def decode_value(data: Any, key: str, allocator: Allocator) -> ChunkBufferLike | None:
    """A stored value (header + payload) as a verified chunk buffer, ``None`` for no value."""
    if data is None:
        return None
    if not isinstance(data, bytes):  # decode_responses is off: always bytes
        raise CorruptChunkError("unexpected value type")
    return decode(data, key, allocator)


class RedisStore:
    """One Redis/Valkey server, reached directly or through Sentinel.

    Args:
        spec: a ``"redis"`` or ``"sentinel"`` :class:`.RemoteSpec`.
        timeout_secs: socket timeout of each call.
    """

    def __init__(self, spec: RemoteSpec, timeout_secs: float) -> None:
        """A client of the server (or Sentinel-managed master) ``spec`` names."""
        if spec.kind not in ("redis", "sentinel"):
            raise ValueError(f"RedisStore cannot serve a {spec.kind} URL")
        self._spec = spec
        self._client = self._connect(timeout_secs)

    def _connect(self, timeout_secs: float) -> redis.Redis:
        spec = self._spec
        kwargs = _client_kwargs(timeout_secs)
        if spec.kind == "sentinel":
            assert spec.service_name is not None
            sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py's
                list(spec.nodes),
                sentinel_kwargs=_client_kwargs(timeout_secs),
                username=spec.username,
                password=spec.password,
                **kwargs,
            )
            master: redis.Redis = sentinel.master_for(spec.service_name)  # type: ignore[no-untyped-call]
            return master
        if spec.redis_url is not None:
            return redis.Redis.from_url(spec.redis_url, **kwargs)
        host, port = spec.nodes[0]
        return redis.Redis(
            host=host,
            port=port,
            db=spec.db,
            username=spec.username,
            password=spec.password,
            **kwargs,
        )

    def set_timeout(self, timeout_secs: float) -> None:
        """Applies ``timeout_secs`` to the next calls."""
        old, self._client = self._client, self._connect(timeout_secs)
        old.close()

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return bool(self._client.exists(key))

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        """Whether each of ``keys`` is stored (one round trip per server)."""
        pipe = self._client.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        return [bool(x) for x in pipe.execute()]

    def load(self, key: str, allocator: Allocator) -> ChunkBufferLike | None:
        """The verified chunk under ``key`` in a buffer from ``allocator``, or ``None``."""
        return decode_value(self._client.get(key), key, allocator)

    def load_raw_many(self, keys: Sequence[str]) -> list[Any]:
        """The stored values of ``keys`` (``None`` where absent), one round trip."""
        return list(self._client.mget(list(keys))) if keys else []

    def save(self, key: str, buf: ChunkBufferLike) -> bool:
        """Writes ``buf`` under ``key``; ``True`` on success."""
        self._client.set(key, encode(key, buf.tensor))
        return True

    def delete(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when it existed."""
        return bool(self._client.delete(key))

    def keys(self, prefix: str) -> list[str]:
        """The stored keys under ``prefix``."""
        pattern = _redis_glob_escape(prefix) + "*"
        return [
            k.decode("utf-8", "replace") for k in self._client.scan_iter(match=pattern, count=1000)
        ]

    def clear(self, prefix: str) -> int:
        """Deletes the keys under ``prefix``; returns how many."""
        keys = self.keys(prefix)
        n = 0
        for i in range(0, len(keys), 512):
            n += int(self._client.delete(*keys[i : i + 512]))
        return n

    def nodes_down(self) -> int:
        """Nodes currently skipped after a failure (0 for a single server)."""
        return 0

    def close(self) -> None:
        """Closes the connections."""
        self._client.close()


class ClusterStore:
    """A Redis Cluster (or Valkey cluster), keys spread over its masters by hash slot.

    The cluster client is created on first use, so an unreachable cluster at start-up is a
    down tier, not a start-up failure.

    Args:
        spec: a ``"cluster"`` :class:`.RemoteSpec` (its nodes are the seed nodes).
        timeout_secs: socket timeout of each call.
        node_retry_secs: how long a failed node is skipped (its keys are misses).
        on_node_error: told about each node failure (for counting and logging).
    """

    def __init__(
        self,
        spec: RemoteSpec,
        timeout_secs: float,
        node_retry_secs: float = 1.0,
        on_node_error: NodeErrorHook | None = None,
    ) -> None:
        """A client of the cluster ``spec`` names."""
        if spec.kind != "cluster":
            raise ValueError(f"ClusterStore cannot serve a {spec.kind} URL")
        self._spec = spec
        self._timeout = float(timeout_secs)
        self._node_retry = float(node_retry_secs)
        self._on_node_error = on_node_error
        self._lock = threading.Lock()
        self._client: RedisCluster | None = None
        self._down_until: dict[str, float] = {}

    # -- client and topology -------------------------------------------------------------------

    def _cluster(self) -> RedisCluster:
        with self._lock:
            if self._client is None:
                try:
                    self._client = RedisCluster(
                        startup_nodes=[
                            ClusterNode(h, p)  # type: ignore[no-untyped-call]
                            for h, p in self._spec.nodes
                        ],
                        username=self._spec.username,
                        password=self._spec.password,
                        require_full_coverage=False,
                        socket_timeout=self._timeout,
                        socket_connect_timeout=self._timeout,
                        retry=_no_retry(),
                    )
                except RedisClusterException as exc:
                    raise redis.ConnectionError(f"no cluster node answered ({exc})") from None
            return self._client

    def set_timeout(self, timeout_secs: float) -> None:
        """Applies ``timeout_secs`` to the next calls."""
        with self._lock:
            self._timeout = float(timeout_secs)
            old, self._client = self._client, None
        if old is not None:
            old.close()

    def _node_failed(self, op: str, node: ClusterNode, exc: BaseException) -> None:
        with self._lock:
            self._down_until[node.name] = time.monotonic() + self._node_retry
        if self._on_node_error is not None:
            self._on_node_error(op, node.name, exc)
        # The slot map may have changed (a replica promoted); refresh it, best effort.
        client = self._client
        if client is not None:
            with contextlib.suppress(*STORE_ERRORS):
                client.nodes_manager.initialize()

    def _node_is_down(self, node: ClusterNode) -> bool:
        with self._lock:
            until = self._down_until.get(node.name)
            if until is None:
                return False
            if time.monotonic() < until:
                return True
            del self._down_until[node.name]
            return False

    def nodes_down(self) -> int:
        """How many nodes are being skipped after a failure."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._down_until.values() if now < t)

    def _group_by_node(
        self, cluster: RedisCluster, keys: Sequence[str]
    ) -> dict[str, tuple[ClusterNode | None, list[int]]]:
        groups: dict[str, tuple[ClusterNode | None, list[int]]] = {}
        for i, key in enumerate(keys):
            try:
                node: ClusterNode | None = cluster.nodes_manager.get_node_from_slot(
                    cluster.keyslot(key)  # type: ignore[no-untyped-call]
                )
            except (RedisClusterException, IndexError):
                node = None  # slot not covered: a miss
            name = node.name if node is not None else ""
            groups.setdefault(name, (node, []))[1].append(i)
        return groups

    def _per_node(
        self,
        op: str,
        keys: Sequence[str],
        queue: Callable[[Any, str], None],
        fallback: Callable[[RedisCluster, str], Any],
        miss: Any,
    ) -> list[Any]:
        """Runs one pipeline per node; the keys of a failed or skipped node are ``miss``.

        Raises:
            redis.ConnectionError: the cluster client could not be created (no seed answered).
        """
        cluster = self._cluster()
        out: list[Any] = [miss] * len(keys)
        for node, idxs in self._group_by_node(cluster, keys).values():
            if node is None or self._node_is_down(node):
                continue
            try:
                pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
                for i in idxs:
                    queue(pipe, keys[i])
                replies = pipe.execute(raise_on_error=False)
            except STORE_ERRORS as exc:
                self._node_failed(op, node, exc)
                continue
            for i, reply in zip(idxs, replies, strict=True):
                if isinstance(reply, AskError):  # MOVED or ASK: the cluster client follows it
                    try:
                        out[i] = fallback(cluster, keys[i])
                    except STORE_ERRORS as exc:
                        self._node_failed(op, node, exc)
                elif isinstance(reply, Exception):  # e.g. CLUSTERDOWN for this slot
                    if self._on_node_error is not None:
                        self._on_node_error(op, node.name, reply)
                else:
                    out[i] = reply
        return out

    # -- byte-level operations ---------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return self.exists_many([key])[0]

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        """Whether each of ``keys`` is stored (one round trip per server)."""
        replies = self._per_node(
            "contains",
            keys,
            lambda pipe, k: pipe.exists(k),
            lambda cluster, k: cluster.exists(k),
            0,
        )
        return [bool(r) for r in replies]

    def load_raw_many(self, keys: Sequence[str]) -> list[Any]:
        """The stored values of ``keys``; ``None`` where absent or on a failed node."""
        return self._per_node(
            "get",
            keys,
            lambda pipe, k: pipe.get(k),
            lambda cluster, k: cluster.get(k),
            None,
        )

    def load(self, key: str, allocator: Allocator) -> ChunkBufferLike | None:
        """The verified chunk under ``key`` in a buffer from ``allocator``, or ``None``."""
        return decode_value(self.load_raw_many([key])[0], key, allocator)

    def save(self, key: str, buf: ChunkBufferLike) -> bool:
        """Stores ``buf``; ``False`` when the node owning the key failed or is skipped."""
        value = encode(key, buf.tensor)
        return bool(
            self._per_node(
                "put",
                [key],
                lambda pipe, k: pipe.set(k, value),
                lambda cluster, k: cluster.set(k, value),
                None,
            )[0]
        )

    def delete(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when it existed."""
        return bool(
            self._per_node(
                "remove",
                [key],
                lambda pipe, k: pipe.delete(k),
                lambda cluster, k: cluster.delete(k),
                0,
            )[0]
        )

    def _primaries(self, cluster: RedisCluster) -> list[ClusterNode]:
        primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
        return [n for n in primaries if not self._node_is_down(n)]

    def _node_keys(self, cluster: RedisCluster, node: ClusterNode, prefix: str) -> list[str]:
        pattern = _redis_glob_escape(prefix) + "*"
        conn = cluster.get_redis_connection(node)
        return [k.decode("utf-8", "replace") for k in conn.scan_iter(match=pattern, count=1000)]

    def keys(self, prefix: str) -> list[str]:
        """The stored keys under ``prefix``."""
        cluster = self._cluster()
        out: list[str] = []
        for node in self._primaries(cluster):
            try:
                out.extend(self._node_keys(cluster, node, prefix))
            except STORE_ERRORS as exc:
                self._node_failed("keys", node, exc)
        return out

    def clear(self, prefix: str) -> int:
        """Deletes the keys under ``prefix``; returns how many."""
        cluster = self._cluster()
        n = 0
        for node in self._primaries(cluster):
            try:
                keys = self._node_keys(cluster, node, prefix)
                conn = cluster.get_redis_connection(node)
                for i in range(0, len(keys), 512):
                    # NOTE: one DEL per key; a multi-key DEL must stay within one slot.
                    pipe = conn.pipeline(transaction=False)
                    for k in keys[i : i + 512]:
                        pipe.delete(k)
                    n += sum(int(r) for r in pipe.execute(raise_on_error=False) if r == 1)
            except STORE_ERRORS as exc:
                self._node_failed("clear", node, exc)
        return n

    def close(self) -> None:
        """Closes the connections."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
