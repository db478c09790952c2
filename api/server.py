"""Serve the admin API with uvicorn on a background thread, and stop it cleanly.

Used by ``lmcache-native serve`` and by the vLLM connector (which serves the API from a vLLM
worker)::

    handle = start(engine, config, host="127.0.0.1", port=7000)
    ...
    handle.stop()  # returns once the listening socket is closed and the port is free
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from lmcache_native.api.app import create_app
from lmcache_native.api.deps import InferenceInfoProvider
from lmcache_native.api.security import API_KEY_CONFIG, MAX_QUERY_BYTES
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine

logger = logging.getLogger("lmcache_native.api.server")

_HEAD_ROOM = 64 << 10  # request line + headers beyond the query string


@dataclass
class ServerHandle:
    """A running admin API server.

    Attributes:
        host: the address it listens on.
        port: the port it listens on (the real one when 0 was asked for).
    """

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _socket: socket.socket = field(repr=False)

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops serving, waits for the thread, and closes the listening socket.

        Args:
            timeout: seconds to wait for in-flight requests before forcing the exit.
        """
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._socket.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def start(
    engine: CacheEngine | None,
    config: LMCacheEngineConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 7000,
    *,
    inference_info: InferenceInfoProvider | None = None,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
    **app_kwargs: Any,
) -> ServerHandle:
    """Starts the admin API for ``engine`` on a daemon thread.

    The socket is bound here, so a port already in use raises ``OSError`` at once, and
    ``port=0`` picks a free port (read it from the handle).

    Args:
        engine: the engine behind the API, or ``None``.
        config: the engine configuration (see ``create_app``).
        host: the address to listen on (127.0.0.1 by default: local access only).
        port: the port (0: any free port).
        inference_info: host details for ``/inference_info``.
        log_level: uvicorn's log level.
        startup_timeout: seconds to wait for the server to accept connections.
        **app_kwargs: more keyword arguments for ``create_app``.

    Returns:
        A handle with ``host``, ``port``, ``url`` and ``stop()``.

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: the server did not start within ``startup_timeout``.
    """
    app = create_app(engine, config, inference_info=inference_info, bind_host=host, **app_kwargs)
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    cfg = config if config is not None else getattr(engine, "config", None)
    if not _is_loopback(host) and not (cfg is not None and cfg.get(API_KEY_CONFIG)):
        logger.warning(
            "admin API listening on %s:%d without an API key: anyone who can reach this address "
            "can clear the cache, change the configuration and make the server read files; "
            "set internal_api_server_api_key",
            host,
            bound_port,
        )
    max_query = int(app_kwargs.get("max_query_bytes", MAX_QUERY_BYTES))
    uv_config = uvicorn.Config(
        app,
        log_level=log_level,
        http="h11",
        loop="asyncio",
        lifespan="on",
        access_log=False,
        # NOTE: h11 bounds the request head; keep it above the app's query limit so an
        # over-long query gets the app's JSON 414 rather than h11's plain-text 400.
        h11_max_incomplete_event_size=max_query + _HEAD_ROOM,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(uv_config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:
            failure.append(exc)
            logger.exception("admin API server stopped with an error")

    thread = threading.Thread(target=run, name=f"lmcache-native-api:{bound_port}", daemon=True)
    thread.start()
    handle = ServerHandle(host=host, port=bound_port, _server=server, _thread=thread, _socket=sock)
    ticks = int(startup_timeout / 0.01)
    for _ in range(ticks):
        if server.started:
            return handle
        if not thread.is_alive():
            break
        threading.Event().wait(0.01)
    handle.stop(timeout=2.0)
    reason = f": {failure[0]!r}" if failure else ""
    raise RuntimeError(f"admin API server did not start on {handle.url}{reason}")
