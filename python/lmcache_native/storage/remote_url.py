"""``remote_url``: the URL forms of the remote tier, read the way LMCache reads them.

=====================================================  ==========================================
form                                                   store
=====================================================  ==========================================
``redis://[user:pass@]host:port[/db]``, ``rediss://``  one Redis server (redis-py ``from_url``)
``unix:///path/redis.sock``                            one Redis server on a Unix socket
``redis-sentinel://[user:pass@]h1:p1,h2:p2[/name]``    the master that Sentinel names
``redis-cluster://[user:pass@]h1:p1,h2:p2``            a Redis Cluster (keys hash to slots)
``valkey://[user:pass@]host:port[/db]``                one Valkey server (``valkey_mode:
                                                       standalone``, the default)
``valkey://h1:p1,h2:p2`` + ``valkey_mode: cluster``    a Valkey cluster
``fs:///abs/dir``, ``fs://host:port/abs/dir``          a directory; ``host:port`` is ignored, as in
                                                       LMCache (``fs://rel/dir``: relative)
=====================================================  ==========================================

``extra_config`` keys (LMCache's names): ``redis_service_name`` (Sentinel master name; else the
URL path, else the ``REDIS_SERVICE_NAME`` environment variable, else ``"redismaster"``, LMCache's
default), ``valkey_mode`` (``"standalone"`` or ``"cluster"``), ``valkey_username``,
``valkey_password``, ``valkey_database``, and ``redis_mode: cluster`` (LMCache's newer spelling
of ``redis-cluster://`` for ``redis://h1:p1,h2:p2``).

Host lists are ``host:port`` items separated by commas (``[v6addr]:port`` for IPv6). Credentials
before the last ``@`` are taken literally, as LMCache takes them. Error messages never contain
the password: they name the part of the URL that is wrong, not the URL.

This module imports nothing but the standard library, so configuration validation can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FS_SCHEME = "fs://"
REDIS_SCHEMES: tuple[str, ...] = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEME = "redis-sentinel://"
CLUSTER_SCHEME = "redis-cluster://"
VALKEY_SCHEME = "valkey://"
#: Every scheme ``remote_url`` accepts.
SUPPORTED_SCHEMES: tuple[str, ...] = (
    *REDIS_SCHEMES,
    SENTINEL_SCHEME,
    CLUSTER_SCHEME,
    VALKEY_SCHEME,
    FS_SCHEME,
)
#: Schemes whose authority is a comma-separated host list.
MULTI_HOST_SCHEMES: tuple[str, ...] = (SENTINEL_SCHEME, CLUSTER_SCHEME, VALKEY_SCHEME)

#: LMCache's Sentinel master name when nothing names one.
DEFAULT_SENTINEL_SERVICE_NAME = "redismaster"
#: The ``extra_config`` key naming the Sentinel master (LMCache's ``REDIS_SERVICE_NAME``).
SENTINEL_SERVICE_NAME_KEY = "redis_service_name"
#: The environment variable LMCache reads for the Sentinel master name.
SENTINEL_SERVICE_NAME_ENV = "REDIS_SERVICE_NAME"
VALKEY_MODE_KEY = "valkey_mode"
VALKEY_MODES: tuple[str, ...] = ("standalone", "cluster")
REDIS_MODE_KEY = "redis_mode"

DEFAULT_PORTS = {
    SENTINEL_SCHEME: 26379,
    CLUSTER_SCHEME: 6379,
    VALKEY_SCHEME: 6379,
    "redis://": 6379,
}

# host[:port] where host is a name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?")
# The authority of fs://host:port/path (LMCache's form): a port is what tells it from fs://rel/dir.
_FS_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]*):\d{1,5}")

Kind = Literal["fs", "redis", "sentinel", "cluster"]


@dataclass(frozen=True)
class RemoteSpec:
    """What a ``remote_url`` (plus ``extra_config``) names.

    Attributes:
        kind: ``"fs"``, ``"redis"`` (one server), ``"sentinel"`` or ``"cluster"``.
        scheme: the URL's scheme with ``://``.
        path: the directory of an ``fs://`` store.
        redis_url: for ``redis://``/``rediss://``/``unix://``, the URL handed to redis-py.
        nodes: ``(host, port)`` of the server (valkey standalone), the Sentinels or the cluster
            seed nodes.
        username: the user to authenticate as, if any.
        password: the password, if any (never shown by ``repr``).
        db: the database number (one server only).
        service_name: the Sentinel master name.
    """

    kind: Kind
    scheme: str
    path: Path | None = None
    redis_url: str | None = field(default=None, repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service_name: str | None = None


def _scheme_of(url: str) -> str:
    for scheme in SUPPORTED_SCHEMES:
        if url.startswith(scheme):
            return scheme
    raise ValueError(f"remote_url must start with one of {list(SUPPORTED_SCHEMES)}")


def fs_url_path(url: str) -> Path:
    """The directory an ``fs://`` URL names, as LMCache reads it.

    ``fs:///abs/dir`` -> ``/abs/dir``; ``fs://host:port/abs/dir`` -> ``/abs/dir`` (LMCache's
    documented form: the host and port are ignored); ``fs://rel/dir`` -> ``rel/dir``
    (relative to the working directory). A query or fragment after a ``host:port`` is ignored.

    Raises:
        ValueError: not an ``fs://`` URL, or no directory.
    """
    if not url.startswith(FS_SCHEME):
        raise ValueError("not an fs:// URL")
    rest = url[len(FS_SCHEME) :]
    authority, _slash, path = rest.partition("/")
    if _FS_AUTHORITY.fullmatch(authority):
        path = re.split(r"[?#]", path, maxsplit=1)[0]
        if not path:
            raise ValueError("fs://host:port/ URL without a directory after the host")
        return Path("/" + path)
    if not rest:
        raise ValueError("fs:// URL without a directory")
    return Path(rest)


def _split_userinfo(authority_and_path: str) -> tuple[str | None, str | None, str]:
    """``user:pass@rest`` -> ``(user, pass, rest)``; split at the last ``@``."""
    if "@" not in authority_and_path:
        return None, None, authority_and_path
    userinfo, _, rest = authority_and_path.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return (user or None), (password if colon else None), rest


def parse_host_list(text: str, default_port: int, scheme: str) -> tuple[tuple[str, int], ...]:
    """``"h1:p1,h2:p2"`` -> ``(("h1", p1), ("h2", p2))``; a missing port is ``default_port``.

    Raises:
        ValueError: an empty list, an empty item, a malformed host or a port out of range.
    """
    if not text.strip():
        raise ValueError(f"{scheme} URL names no host")
    nodes: list[tuple[str, int]] = []
    for i, item in enumerate(text.split(",")):
        item = item.strip()
        m = _HOST_PORT.fullmatch(item)
        if not m:
            raise ValueError(f"{scheme} URL: host #{i + 1} is not 'host:port'")
        host = m.group("host").strip("[]")
        port = int(m.group("port")) if m.group("port") else default_port
        if not 1 <= port <= 65535:
            raise ValueError(f"{scheme} URL: port of host #{i + 1} is out of range")
        nodes.append((host, port))
    return tuple(nodes)


def _extra_str(extra: Mapping[str, Any], key: str) -> str | None:
    value = extra.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"extra_config['{key}'] must be a string")
    return value


def _parse_multi_host(
    url: str, scheme: str
) -> tuple[str | None, str | None, tuple[tuple[str, int], ...], str]:
    rest = url[len(scheme) :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"{scheme} URL: query parameters are not supported")
    user, password, rest = _split_userinfo(rest)
    hosts, _, path = rest.partition("/")
    return user, password, parse_host_list(hosts, DEFAULT_PORTS[scheme], scheme), path


def _valkey_mode(extra: Mapping[str, Any]) -> str:
    mode = _extra_str(extra, VALKEY_MODE_KEY) or "standalone"
    if mode not in VALKEY_MODES:
        raise ValueError(f"extra_config['{VALKEY_MODE_KEY}'] must be one of {list(VALKEY_MODES)}")
    return mode


def _db_of(text: str, scheme: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"{scheme} URL: the path must be a database number")
    return int(text)


def parse_remote_url(
    url: str,
    extra_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RemoteSpec:
    """Reads ``remote_url`` (and the ``extra_config`` keys that shape it) into a spec.

    Args:
        url: the ``remote_url`` value.
        extra_config: the configuration's ``extra_config`` (``None`` = empty).
        environ: where ``REDIS_SERVICE_NAME`` is looked up (default ``os.environ``).

    Raises:
        ValueError: an unsupported scheme or a malformed URL; the message never holds the
            password.
    """
    extra = extra_config or {}
    env = os.environ if environ is None else environ
    scheme = _scheme_of(url)
    if scheme == FS_SCHEME:
        return RemoteSpec(kind="fs", scheme=scheme, path=fs_url_path(url))
    if scheme in REDIS_SCHEMES:
        if scheme == "redis://" and _extra_str(extra, REDIS_MODE_KEY) == "cluster":
            user, password, nodes, _ = _parse_multi_host(url, scheme="redis://")
            return RemoteSpec(
                kind="cluster", scheme=scheme, nodes=nodes, username=user, password=password
            )
        return RemoteSpec(kind="redis", scheme=scheme, redis_url=url)
    if scheme == SENTINEL_SCHEME:
        user, password, nodes, path = _parse_multi_host(url, scheme)
        name = (
            path
            or _extra_str(extra, SENTINEL_SERVICE_NAME_KEY)
            or env.get(SENTINEL_SERVICE_NAME_ENV)
            or DEFAULT_SENTINEL_SERVICE_NAME
        )
        return RemoteSpec(
            kind="sentinel",
            scheme=scheme,
            nodes=nodes,
            username=user,
            password=password,
            service_name=name,
        )
    if scheme == CLUSTER_SCHEME:
        user, password, nodes, path = _parse_multi_host(url, scheme)
        if path not in ("", "0"):
            raise ValueError(f"{scheme} URL: a cluster has only database 0 (no path)")
        return RemoteSpec(
            kind="cluster", scheme=scheme, nodes=nodes, username=user, password=password
        )
    # valkey://
    user, password, nodes, path = _parse_multi_host(url, scheme)
    user = user or _extra_str(extra, "valkey_username")
    password = password or _extra_str(extra, "valkey_password")
    if _valkey_mode(extra) == "cluster":
        if path not in ("", "0"):
            raise ValueError(f"{scheme} URL: a cluster has only database 0 (no path)")
        return RemoteSpec(
            kind="cluster", scheme=scheme, nodes=nodes, username=user, password=password
        )
    if len(nodes) != 1:
        raise ValueError(
            f"{scheme} URL names {len(nodes)} hosts; set extra_config['{VALKEY_MODE_KEY}'] to "
            "'cluster' for a cluster"
        )
    db_value = extra.get("valkey_database")
    if path:
        db = _db_of(path, scheme)
    elif db_value is None:
        db = 0
    elif isinstance(db_value, int) and not isinstance(db_value, bool) and db_value >= 0:
        db = db_value
    elif isinstance(db_value, str) and db_value.isdigit():
        db = int(db_value)
    else:
        raise ValueError("extra_config['valkey_database'] must be a database number")
    return RemoteSpec(
        kind="redis", scheme=scheme, nodes=nodes, username=user, password=password, db=db
    )


def validate_remote_url(url: str) -> None:
    """Checks what can be checked of ``remote_url`` without ``extra_config``.

    Raises:
        ValueError: an unsupported scheme or a malformed URL (message without the password).
    """
    scheme = _scheme_of(url)
    if scheme == FS_SCHEME:
        fs_url_path(url)
    elif scheme == VALKEY_SCHEME:
        parse_remote_url(url, {VALKEY_MODE_KEY: "cluster" if "," in url else "standalone"})
    elif scheme in MULTI_HOST_SCHEMES:
        parse_remote_url(url, environ={})
