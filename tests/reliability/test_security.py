"""Security.

Loopback by default, the API key on every route and method (constant-time), no file contents /
environment values / tracebacks / secrets in answers, the key never in logs or /conf, and no
cross-site (CSRF) writes through non-JSON bodies.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from lmcache_native.api import create_app, server
from lmcache_native.api import security as api_security
from lmcache_native.config import CONFIG_DEFINITIONS, LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from reliability_lib import LAYOUT, Served, assert_error_shape, random_cache

KEY = "k3y-0f-the-admin-api-9f8e7d6c5b4a"
CANARY_ENV = "LMC_RELIABILITY_CANARY"
CANARY = "canary-env-value-3141592653"
FILE_SECRET = "file-secret-value-2718281828"
REDIS_PASSWORD = "redis-pa55word-1618033988"


def _config(**overrides: Any) -> LMCacheEngineConfig:
    values: dict[str, Any] = {"chunk_size": 16, "max_local_cpu_size": 0.01}
    values.update(overrides)
    return LMCacheEngineConfig.from_defaults(**values)


@pytest.fixture
def engine() -> Iterator[CacheEngine]:
    e = CacheEngine(_config(), EngineMetadata(model_name="sec/model"))
    e.register_kv_caches(random_cache(41), LAYOUT)
    try:
        yield e
    finally:
        e.close()


def _client(engine: CacheEngine | None, config: LMCacheEngineConfig) -> TestClient[Litestar]:
    return TestClient(create_app(engine, config))


# -- bind address ---------------------------------------------------------------------------------


def test_loopback_is_the_default_everywhere():
    assert CONFIG_DEFINITIONS["internal_api_server_host"].default == "127.0.0.1"
    assert LMCacheEngineConfig.from_defaults().get("internal_api_server_host") == "127.0.0.1"
    assert inspect.signature(server.start).parameters["host"].default == "127.0.0.1"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of listening TCP sockets on ``port`` (from /proc/net/tcp{,6})."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, port_hex = fields[1].rsplit(":", 1)
                if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                    out.add(addr)
    return out


@pytest.mark.slow
def test_serve_listens_on_loopback_only_by_default():
    served = Served()
    try:
        assert served.url.startswith("http://127.0.0.1:")
        # 0100007F is 127.0.0.1 in /proc's little-endian hex; 0.0.0.0 would be 00000000.
        assert _listening_addresses(served.port) == {"0100007F"}
    finally:
        assert served.stop() == 0


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", KEY, False), ("127.0.0.1", None, False)],
)
def test_non_loopback_without_a_key_is_warned_about(engine, caplog, host, key, warned):
    caplog.set_level(logging.WARNING, logger="lmcache_native.api.server")
    cfg = _config(internal_api_server_api_key=key) if key else _config()
    handle = server.start(engine, cfg, host, 0)
    try:
        assert handle.running
    finally:
        handle.stop()
    assert ("without an API key" in caplog.text) is warned
    assert KEY not in caplog.text


# -- the API key ----------------------------------------------------------------------------------


def _routes(app: Litestar) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its route table."""
    out = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", ())):
            out.append((method, route.path))
    return out


@pytest.fixture
def secured(engine: CacheEngine) -> Iterator[TestClient[Litestar]]:
    with _client(engine, _config(internal_api_server_api_key=KEY)) as c:
        yield c


def _public_paths(app: Litestar) -> set[str]:
    """Paths of the routes served without the key (``opt`` flag ``PUBLIC_ROUTE_OPT``)."""
    return {
        route.path
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if handler.opt.get(api_security.PUBLIC_ROUTE_OPT)
    }


def test_every_route_and_method_requires_the_key(secured):
    # Only the dashboard's static shell (no data) is public; see test_dashboard.py.
    public = _public_paths(secured.app)
    assert public == {
        "/dashboard",
        "/dashboard/dashboard.css",
        *(
            f"/dashboard/{name}.js"
            for name in ("dashboard", "format", "api", "charts", "metrics", "panels", "checksum")
        ),
    }
    routes = [(m, p) for m, p in _routes(secured.app) if p not in public]
    assert len(routes) >= 30
    paths = {p for _, p in routes}
    for path in ("/conf", "/cache/clear", "/cache/load-fs-chunks", "/metrics", "/schema"):
        assert path in paths, sorted(paths)
    bad = {
        "missing": {},
        "wrong": {"Authorization": f"Bearer {KEY}x"},
        "prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
        "basic": {"Authorization": f"Basic {KEY}"},
        "bare": {"Authorization": KEY},
        "empty": {"Authorization": "Bearer "},
        "query_param": {},  # the key in the query string is not accepted
    }
    for method, path in routes:
        for name, headers in bad.items():
            url = f"{path}?api_key={KEY}&key={KEY}" if name == "query_param" else path
            r = secured.request(method, url, headers=headers, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, name, r.status_code, r.text[:200])
            if method != "HEAD":
                body = assert_error_shape(r, 401)
                assert body["error"] == "Unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            assert KEY not in r.text
        ok = secured.request(
            method,
            path,
            headers={"Authorization": f"Bearer {KEY}"},
            json={} if method == "POST" else None,
        )
        assert ok.status_code != 401, (method, path, ok.text[:200])
    # Paths and methods that do not exist do not tell an unauthenticated caller so.
    for method, path in (("GET", "/nope"), ("PATCH", "/conf"), ("DELETE", "/freeze/enable")):
        assert secured.request(method, path).status_code == 401


def test_the_key_is_compared_in_constant_time(secured, monkeypatch):
    """Every check goes through hmac.compare_digest with the full key and the given token."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(api_security.hmac, "compare_digest", spy)
    assert secured.get("/health", headers={"Authorization": "Bearer short"}).status_code == 401
    assert secured.get("/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert calls == [(b"short", KEY.encode()), (KEY.encode(), KEY.encode())]
    assert "==" not in inspect.getsource(api_security.make_api_key_check).split("compare_digest")[1]


# -- no secrets, files, environment or tracebacks in answers --------------------------------------


def _crawl(client: TestClient[Litestar], headers: dict[str, str] | None = None) -> str:
    """Every read-only answer of the API, concatenated."""
    out = []
    for path in (
        "/conf",
        "/meta",
        "/inference_info",
        "/inference_version",
        "/version",
        "/lmc_version",
        "/commit_id",
        "/health",
        "/metrics",
        "/cache/kvcache/info",
        "/bypass/list",
        "/freeze/status",
        "/hot_cache/status",
        "/chunk_statistics/status",
        "/schema/openapi.json",
        "/conf?names=internal_api_server_api_key,remote_url",
    ):
        out.append(client.get(path, headers=headers).text)
    return "\n".join(out)


@pytest.mark.usefixtures("engine")
def test_key_and_credentials_never_in_answers_or_logs(caplog, monkeypatch):
    monkeypatch.setenv(CANARY_ENV, CANARY)
    caplog.set_level(logging.DEBUG)
    cfg = _config(
        internal_api_server_api_key=KEY,
        remote_url=f"redis://admin:{REDIS_PASSWORD}@127.0.0.1:1/0",  # nothing listens there
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    eng = CacheEngine(cfg, EngineMetadata(model_name="sec/model"))
    eng.register_kv_caches(random_cache(42), LAYOUT)
    try:
        with _client(eng, cfg) as c:
            text = _crawl(c, auth)
            assert c.get("/conf", headers=auth).json()["internal_api_server_api_key"] == "***"
            assert c.get("/conf", headers=auth).json()["remote_url"] == (
                "redis://admin:***@127.0.0.1:1/0"
            )
            # The remote tier fails (logged), updates are refused (not echoed), errors happen.
            assert c.post("/cache/store?tokens_mock=0,32", headers=auth).status_code == 200
            eng.flush(timeout=30)
            r = c.post("/conf", json={"internal_api_server_api_key": "new-" + KEY}, headers=auth)
            assert r.status_code == 400
            text += r.text
            for wrong in (f"Bearer {KEY}1", f"Bearer {KEY.upper()}", "Bearer"):
                text += c.get("/health", headers={"Authorization": wrong}).text
    finally:
        eng.close()
    for secret in (KEY, REDIS_PASSWORD, CANARY):
        assert secret not in text, secret
        assert secret not in caplog.text, secret
    assert "redis://admin:***@127.0.0.1:1/0" in caplog.text or "***" in caplog.text
    assert "Traceback" not in text


def test_internal_errors_answer_without_traceback_or_detail(engine, caplog):
    """An unexpected exception inside a handler is a 500 with the error shape.

    Naming only the exception type; its message and traceback go to the server log only.
    """
    detail = f"internal detail {FILE_SECRET} /very/private/path"

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError(detail)

    caplog.set_level(logging.ERROR)
    cfg = _config()
    with _client(engine, cfg) as c:
        for attr, method, path in (
            ("kv_info", "GET", "/cache/kvcache/info"),
            ("metadata_dict", "GET", "/meta"),
            ("clear", "DELETE", "/cache/clear"),
            ("store", "POST", "/cache/store?tokens_mock=0,16"),
            ("retrieve", "POST", "/cache/retrieve?tokens_mock=0,16"),
            ("kv_checksums", "GET", "/cache/kvcache/check?slot_mapping=0,1&chunk_size=1"),
            ("freeze", "PUT", "/freeze/enable"),
            ("bypassed_backends", "GET", "/bypass/list"),
        ):
            original = getattr(engine, attr)
            setattr(engine, attr, boom)
            try:
                r = c.request(method, path)
            finally:
                setattr(engine, attr, original)
            body = assert_error_shape(r, 500)
            assert "RuntimeError" in body["message"], body
            assert FILE_SECRET not in r.text
            assert "/very/private" not in r.text
            assert "Traceback" not in r.text
            assert 'File "' not in r.text
    assert "Traceback" in caplog.text
    assert FILE_SECRET in caplog.text  # logged on the server


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "/etc/shadow", "/proc/self/environ", "/proc/self/cmdline", "/proc/self/maps"],
)
def test_load_fs_chunks_never_returns_file_or_environment_contents(engine, monkeypatch, target):
    monkeypatch.setenv(CANARY_ENV, CANARY)
    with _client(engine, _config()) as c:
        r = c.post("/cache/load-fs-chunks", json={"config_path": target})
    assert r.status_code in (400, 200), r.text
    if r.status_code == 400:
        assert_error_shape(r, 400)
    assert CANARY not in r.text
    if os.path.exists(target):
        with open(target, "rb") as f:
            head = f.read(4096)
        for line in head.replace(b"\0", b"\n").splitlines():
            if len(line) >= 12:  # any distinctive line of the file
                assert line.decode("latin-1") not in r.text, line


@pytest.mark.parametrize(
    "content",
    [
        f"remote_url: fs:///nonexistent/{FILE_SECRET}\n",
        f"remote_url: redis://host/{FILE_SECRET}\n",
        f"chunk_size: {FILE_SECRET}\n",
        f"{FILE_SECRET}: 1\nremote_url: fs:///nonexistent\n",
        f"- {FILE_SECRET}\n",
        f"password: {FILE_SECRET}\n",
        f"[{FILE_SECRET}",
        f"key: '{FILE_SECRET}\n",
    ],
)
def test_load_fs_chunks_never_echoes_the_config_file(engine, tmp_path, content):
    path = tmp_path / "lmcache.yaml"
    path.write_text(content)
    with _client(engine, _config()) as c:
        r = c.post("/cache/load-fs-chunks", json={"config_path": str(path)})
    body = assert_error_shape(r, 400)
    assert body["config_path"] == str(path)
    assert FILE_SECRET not in r.text


def test_load_fs_chunks_success_does_not_echo_the_config_file(engine, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    path = tmp_path / "lmcache.yaml"
    path.write_text(f"remote_url: fs://{store}\nextra_config: {{token: {FILE_SECRET}}}\n")
    with _client(engine, _config()) as c:
        r = c.post("/cache/load-fs-chunks", json={"config_path": str(path)})
    assert r.status_code == 200, r.text
    assert r.json()["loaded_chunks"] == 0
    assert FILE_SECRET not in r.text


# -- cross-site requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
def test_json_endpoints_refuse_bodies_a_web_page_can_send_cross_site(
    engine, tmp_path, content_type
):
    """Bodies a cross-site page can send change nothing and read no file.

    A page in the operator's browser can POST these content types to 127.0.0.1 without a CORS
    preflight.
    """
    cfg = _config()
    before = cfg.to_dict()
    headers = {"content-type": content_type} if content_type else {}
    with _client(engine, cfg) as c:
        r = c.post("/conf", content=b'{"min_retrieve_tokens": 7}', headers=headers)
        assert_error_shape(r, 415)
        marker = tmp_path / "lmcache.yaml"
        marker.write_text("remote_url: fs:///nonexistent\n")
        r = c.post(
            "/cache/load-fs-chunks",
            content=f'{{"config_path": "{marker}"}}'.encode(),
            headers=headers,
        )
        assert_error_shape(r, 415)
        assert "access-control-allow-origin" not in r.headers
    assert cfg.to_dict() == before


def test_json_media_types_accepted(engine):
    cfg = _config()
    with _client(engine, cfg) as c:
        for ct in (
            "application/json",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ):
            r = c.post("/conf", content=b'{"min_retrieve_tokens": 3}', headers={"content-type": ct})
            assert r.status_code == 200, (ct, r.text)
    assert cfg.get("min_retrieve_tokens") == 3


def test_no_cors_headers(engine):
    with _client(engine, _config()) as c:
        for method, path in (("GET", "/conf"), ("OPTIONS", "/conf"), ("DELETE", "/cache/clear")):
            r = c.request(
                method,
                path,
                headers={
                    "Origin": "http://evil.example",
                    "Access-Control-Request-Method": "DELETE",
                },
            )
            assert not any(h.lower().startswith("access-control-") for h in r.headers), r.headers


# -- the key in a real server's logs --------------------------------------------------------------


@pytest.mark.slow
def test_serve_never_logs_the_key():
    served = Served(
        "--log-level",
        "debug",
        env={
            "LMCACHE_INTERNAL_API_SERVER_API_KEY": KEY,
            "LMCACHE_REMOTE_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
            CANARY_ENV: CANARY,
        },
    )
    try:
        with served.client() as c:
            auth = {"Authorization": f"Bearer {KEY}"}
            assert c.get("/health").status_code == 401
            assert c.get("/health", headers={"Authorization": f"Bearer {KEY}0"}).status_code == 401
            assert c.post("/cache/store?tokens_mock=0,256", headers=auth).status_code == 200
            assert c.post("/cache/retrieve?tokens_mock=0,256", headers=auth).status_code == 200
            text = _crawl_http(c, auth)
            r = c.post("/cache/kvcache/record_slot?enabled=true", headers=auth)
            assert r.status_code == 200
            c.post("/cache/store?tokens_mock=256,512", headers=auth)
            c.post("/conf", json={"internal_api_server_api_key": "x"}, headers=auth)
    finally:
        assert served.stop() == 0
    logs = served.logs()
    assert "RemoteBackend" in logs  # the failing Redis was logged ...
    for secret in (KEY, REDIS_PASSWORD, CANARY):
        assert secret not in logs, secret  # ... without the key or the password
        assert secret not in text, secret


def _crawl_http(c: Any, auth: dict[str, str]) -> str:
    paths = ["/conf", "/meta", "/inference_info", "/metrics", "/health", "/chunk_statistics/status"]
    return "\n".join(c.get(p, headers=auth).text for p in paths)
