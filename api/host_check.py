"""The Host-header allow-list: the admin API answers only to the names it is reachable as.

A web page an operator opens can make the browser send requests to any name the page's author
controls; after the author re-points that name at 127.0.0.1 (DNS rebinding), the browser treats
the admin API as the page's own origin and lets the page read answers and send PUT/POST/DELETE.
The one thing such a request cannot hide is its ``Host`` header, which carries the attacker's
name. So every request must name one of:

- a loopback name: ``localhost``, any ``127.x.y.z``, ``[::1]``;
- the address the connection arrived on (the ASGI ``server`` of the request: for uvicorn the
  local socket address, for Litestar's test client the host of its base URL);
- the bind address; when bound to every interface (``0.0.0.0``, ``::``), the machine's host
  name and fully qualified name and the addresses they resolve to;
- a name the operator listed in ``internal_api_server_allowed_hosts`` (``name`` for any port,
  ``name:port`` for one port, ``*.example.com`` for subdomains, ``*`` for any name).

Anything else is answered 400 ``{"error": "Invalid Host header", "message": ...}`` before any
handler (and before the API-key guard) runs. IP literals other than the ones above are refused
too: the check lists what the server is reachable as, it does not guess.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from lmcache_native.api.errors import ApiError

__all__ = [
    "ALLOWED_HOSTS_CONFIG",
    "INVALID_HOST",
    "HostAllowList",
    "HostCheckMiddleware",
    "parse_host",
]

ALLOWED_HOSTS_CONFIG = "internal_api_server_allowed_hosts"
INVALID_HOST = "Invalid Host header"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
# NOTE: the whole header must be a name or an IP literal with an optional port; "user@host",
# paths, spaces, zone ids and the like are refused rather than parsed leniently.
_HOST_RE = re.compile(
    r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_-](?:[A-Za-z0-9._-]*))(?::(?P<port>\d{1,5}))?"
)


def parse_host(value: str) -> tuple[str, int | None] | None:
    """Splits a ``Host`` header value into a normalised name and port.

    Args:
        value: ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``.

    Returns:
        ``(name, port)``: the name lower-cased without a trailing dot and IPv6 brackets, the
        port or ``None``; ``None`` when the value is not a host.
    """
    m = _HOST_RE.fullmatch(value.strip())
    if m is None:
        return None
    name = m.group("name").lower()
    if name.startswith("["):
        name = name[1:-1]
        if _ip(name) is None:
            return None
    elif name.endswith(".") and len(name) > 1:
        name = name[:-1]
    port = int(m.group("port")) if m.group("port") is not None else None
    if port is not None and port > 65535:
        return None
    return name, port


def _ip(name: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _is_loopback(name: str) -> bool:
    if name in _LOOPBACK_NAMES:
        return True
    addr = _ip(name)
    return addr is not None and addr.is_loopback


def _same_host(a: str, b: str) -> bool:
    addr_a, addr_b = _ip(a), _ip(b)
    if addr_a is not None or addr_b is not None:
        return addr_a == addr_b
    return a == b


def _resolve(name: str) -> set[IPAddress]:
    """Addresses ``name`` resolves to (none when it does not resolve)."""
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
            addr = _ip(str(info[4][0]).split("%", 1)[0])
            if addr is not None:
                found.add(addr)
    return found


@dataclass(frozen=True)
class HostAllowList:
    """The ``Host`` values one server answers to.

    Attributes:
        names: names accepted with any port (lower case).
        name_ports: ``(name, port)`` pairs accepted with that port only.
        addresses: IP addresses accepted with any port.
        suffixes: ``.example.com`` for a configured ``*.example.com``.
        any_host: ``*`` was configured: every well-formed ``Host`` is accepted.
    """

    names: frozenset[str] = frozenset()
    name_ports: frozenset[tuple[str, int]] = frozenset()
    addresses: frozenset[IPAddress] = frozenset()
    suffixes: tuple[str, ...] = ()
    any_host: bool = False

    @classmethod
    def build(cls, bind_host: str | None, configured: Iterable[str] = ()) -> HostAllowList:
        """The allow-list of a server bound to ``bind_host`` with ``configured`` extra names.

        Args:
            bind_host: the listening address (``None``: not known, loopback names only).
            configured: the operator's entries (``internal_api_server_allowed_hosts``).

        Raises:
            ValueError: a configured entry is not a host name.
        """
        names: set[str] = set()
        name_ports: set[tuple[str, int]] = set()
        addresses: set[IPAddress] = set()
        suffixes: list[str] = []
        any_host = False
        bind = (bind_host or "").strip().strip("[]").lower()
        if bind_host is not None and bind in _WILDCARD_BINDS:
            for own in {socket.gethostname(), socket.getfqdn()}:
                own = own.lower().rstrip(".")
                if own:
                    names.add(own)
                    addresses |= _resolve(own)
        elif bind:
            addr = _ip(bind)
            if addr is not None:
                addresses.add(addr)
            else:
                names.add(bind.rstrip("."))
        for entry in configured:
            entry = entry.strip()
            if entry == "*":
                any_host = True
                continue
            wildcard = entry.startswith("*.")
            parsed = parse_host(entry[2:] if wildcard else entry)
            if parsed is None:
                raise ValueError(f"{ALLOWED_HOSTS_CONFIG}: {entry!r} is not a host name")
            name, port = parsed
            if wildcard:
                suffixes.append("." + name)
            elif port is not None:
                name_ports.add((name, port))
            else:
                addr = _ip(name)
                if addr is not None:
                    addresses.add(addr)
                else:
                    names.add(name)
        return cls(
            names=frozenset(names),
            name_ports=frozenset(name_ports),
            addresses=frozenset(addresses),
            suffixes=tuple(suffixes),
            any_host=any_host,
        )

    def permits(self, host: str | None, local_address: str | None = None) -> bool:
        """Whether a request with this ``Host`` header is answered.

        Args:
            host: the header value (``None`` when the request has none: refused).
            local_address: the server address (or, in tests, name) the connection arrived on.
        """
        if host is None:
            return False
        parsed = parse_host(host)
        if parsed is None:
            return False
        if self.any_host:
            return True
        name, port = parsed
        if _is_loopback(name) or name in self.names:
            return True
        if local_address:
            arrived = local_address.split("%", 1)[0].strip("[]").lower().rstrip(".")
            if arrived and _same_host(name, arrived):
                return True
        if port is not None and (name, port) in self.name_ports:
            return True
        if any(name.endswith(suffix) for suffix in self.suffixes):
            return True
        addr = _ip(name)
        return addr is not None and addr in self.addresses


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class HostCheckMiddleware(ASGIMiddleware):
    """Answers 400 to requests whose ``Host`` is not in the allow-list, before any handler."""

    # NOTE: Litestar's own AllowedHostsMiddleware matches the raw header, port included (so
    # "127.0.0.1:7000" needs its own entry), cannot express "any 127.x" or "the address this
    # connection arrived on", and answers a body without the {"error", "message"} shape.

    def __init__(self, allow: HostAllowList) -> None:
        """Keeps the settings.

        Args:
            allow: the names this server answers to.
        """
        self.allow = allow

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Checks the ``Host`` header, then runs the route."""
        host = _header(scope, b"host")
        server = scope.get("server")
        local = str(server[0]) if server and server[0] else None
        if not self.allow.permits(host, local):
            shown = "none" if host is None else repr(host[:100])
            raise ApiError(
                400,
                INVALID_HOST,
                f"This server does not answer to the Host {shown}. Use an address it listens "
                f"on (e.g. 127.0.0.1 or localhost) or add the name to {ALLOWED_HOSTS_CONFIG}.",
            )
        await next_app(scope, receive, send)
