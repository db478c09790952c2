"""The Host allow-list (DNS rebinding).

Unit cases, every route through the test client, and a real `lmcache-native serve` process.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest
from api_testlib import assert_error, make_config
from litestar import Litestar
from litestar.testing import TestClient
from lmcache_native.api.host_check import INVALID_HOST, HostAllowList, parse_host
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine
from lmcache_native.errors import ConfigError
from test_serve import Served

FOREIGN = "attacker.example"


# -- parsing and the allow-list -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost.:7000", ("localhost", 7000)),
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", None)),
        ("dash.example.com", ("dash.example.com", None)),
    ],
)
def test_parse_host(value, expected):
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "user@127.0.0.1", "127.0.0.1/x", "127.0.0.1:", "127.0.0.1:99999", "[zz]", "a b", "::1"],
)
def test_parse_host_refuses_what_is_not_a_host(value):
    assert parse_host(value) is None


def test_loopback_names_are_always_allowed():
    allow = HostAllowList.build(None)
    for host in (
        "localhost",
        "localhost:1",
        "127.0.0.1",
        "127.9.8.7:80",
        "[::1]:5",
        "[::ffff:127.0.0.1]",
    ):
        assert allow.permits(host), host
    for host in (
        FOREIGN,
        "evil.localhost",
        "10.0.0.1",
        "0.0.0.0",
        "127.0.0.1.attacker.example",
        None,
    ):
        assert not allow.permits(host), host


def test_the_address_the_connection_arrived_on_is_allowed():
    allow = HostAllowList.build(None)
    assert allow.permits("10.1.2.3:7000", local_address="10.1.2.3")
    assert allow.permits("[fe80::1]:7000", local_address="fe80::1%eth0")
    assert not allow.permits("10.1.2.4:7000", local_address="10.1.2.3")
    assert not allow.permits(FOREIGN, local_address="10.1.2.3")


def test_bind_address_and_configured_names():
    allow = HostAllowList.build(
        "10.0.0.7", ["dash.example", "proxy.example:8443", "*.cluster.local", "192.168.1.5"]
    )
    assert allow.permits("10.0.0.7:7000")
    assert allow.permits("DASH.example:1234")
    assert allow.permits("proxy.example:8443")
    assert not allow.permits("proxy.example:8444")
    assert allow.permits("api.ns.cluster.local")
    assert not allow.permits("cluster.local.attacker.example")
    assert allow.permits("192.168.1.5:7000")
    assert not allow.permits(FOREIGN)
    assert HostAllowList.build(None, ["*"]).permits(FOREIGN)
    assert not HostAllowList.build(None, ["*"]).permits("user@host")


def test_wildcard_bind_allows_the_machine_names():
    allow = HostAllowList.build("0.0.0.0")
    assert allow.permits(socket.gethostname())
    assert allow.permits(socket.getfqdn())
    assert allow.permits("localhost")
    assert not allow.permits(FOREIGN)
    # A named bind address is the only extra name.
    assert HostAllowList.build("myhost.example").permits("myhost.example:7000")


def test_config_key_validates_its_entries(monkeypatch):
    cfg = LMCacheEngineConfig.from_defaults(internal_api_server_allowed_hosts=["a.example"])
    assert cfg.get("internal_api_server_allowed_hosts") == ["a.example"]
    monkeypatch.setenv("LMCACHE_INTERNAL_API_SERVER_ALLOWED_HOSTS", "a.example, b.example:81")
    env = LMCacheEngineConfig.load(None)
    assert env.get("internal_api_server_allowed_hosts") == ["a.example", "b.example:81"]
    with pytest.raises(ConfigError, match="internal_api_server_allowed_hosts"):
        LMCacheEngineConfig.from_defaults(internal_api_server_allowed_hosts=["a.example/x"])
    with pytest.raises(ConfigError, match="internal_api_server_allowed_hosts"):
        LMCacheEngineConfig.from_defaults(internal_api_server_allowed_hosts=[7])


# -- every route, through the app -----------------------------------------------------------------


def _routes(app: Litestar) -> list[tuple[str, str]]:
    return [
        (method, route.path)
        for route in app.routes
        for method in sorted(getattr(route, "methods", ()))
        if method not in ("HEAD", "OPTIONS")
    ]


def test_every_route_refuses_a_foreign_host_before_the_key_check(
    make_client: Callable[..., TestClient[Litestar]], engine: CacheEngine
):
    config = make_config(internal_api_server_api_key="host-test-key")
    client = make_client(engine, config)
    auth = {"Authorization": "Bearer host-test-key"}
    routes = _routes(client.app)
    paths = {p for _, p in routes}
    for path in ("/dashboard", "/loglevel", "/freeze/enable", "/metrics", "/conf", "/schema"):
        assert path in paths, sorted(paths)
    for method, path in routes:
        for headers in ({"Host": FOREIGN}, {"Host": FOREIGN, **auth}):
            r = client.request(method, path.replace("{", "").replace("}", ""), headers=headers)
            body = assert_error(r, 400, INVALID_HOST)
            assert FOREIGN in body["message"]
            assert "internal_api_server_allowed_hosts" in body["message"]
    assert not engine.is_frozen  # PUT /freeze/enable never ran
    assert (
        client.get("/freeze/status", headers={"Host": "127.0.0.1:7000", **auth}).status_code == 200
    )
    assert client.get("/freeze/status", headers={"Host": "localhost", **auth}).status_code == 200


def test_configured_names_and_create_app_names(
    make_client: Callable[..., TestClient[Litestar]], engine: CacheEngine
):
    config = make_config(internal_api_server_allowed_hosts=["dash.example"])
    client = make_client(engine, config, allowed_hosts=["ops.example:9000"])
    assert client.get("/health", headers={"Host": "dash.example:7000"}).status_code == 200
    assert client.get("/health", headers={"Host": "ops.example:9000"}).status_code == 200
    assert_error(client.get("/health", headers={"Host": "ops.example"}), 400, INVALID_HOST)
    assert_error(client.get("/health", headers={"Host": FOREIGN}), 400, INVALID_HOST)


# -- a real server --------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_refuses_a_foreign_host():
    served = Served(env={"LMCACHE_INTERNAL_API_SERVER_ALLOWED_HOSTS": "dash.example"})
    try:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            refused = [
                ("PUT", "/freeze/enable"),
                ("GET", "/dashboard"),
                ("GET", "/loglevel?logger_name=lmcache_native&level=DEBUG"),
                ("GET", "/metrics"),
                ("DELETE", "/cache/clear"),
            ]
            for method, path in refused:
                r = c.request(method, path, headers={"Host": FOREIGN})
                assert_error(r, 400, INVALID_HOST)
            assert c.get("/freeze/status").json()["freeze"] is False
            # The right names work: the URL's own host, localhost, and the configured name.
            assert c.put("/freeze/enable").json()["freeze"] is True
            port = served.port
            for host in (f"localhost:{port}", f"dash.example:{port}", "dash.example"):
                r = c.get("/freeze/status", headers={"Host": host})
                assert r.status_code == 200, (host, r.text)
                assert r.json()["freeze"] is True, (host, r.text)
            assert c.get("/dashboard").status_code == 200
            assert "# TYPE" in c.get("/metrics").text
    finally:
        assert served.stop() == 0
