"""API key: every request needs 'Authorization: Bearer <key>' when one is configured."""

from __future__ import annotations

import hmac

import pytest
from api_testlib import assert_error, make_config, spec_calls
from lmcache_native.api import security

KEY = "test-key-0123456789"

ROUTES = [*spec_calls(), ("get", "/schema/openapi.json")]


@pytest.fixture
def secured(make_client, engine):
    return make_client(engine, make_config(internal_api_server_api_key=KEY))


def _call(client, method, path, headers=None):
    if method == "post" and path in ("/conf", "/cache/load-fs-chunks"):
        return client.post(path, json={}, headers=headers)
    return getattr(client, method)(path, headers=headers)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_requires_the_key(secured, method, path):
    r = _call(secured, method, path)
    assert_error(r, 401, "Unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert KEY not in r.text


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_accepts_the_key(secured, method, path):
    r = _call(secured, method, path, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code != 401, r.text


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Basic {KEY}",
        KEY,
        "Bearer",
        "Bearer ",
        f"bearer{KEY}",
        b"Bearer \xe9\xe9",
    ],
)
def test_wrong_credentials(secured, header):
    r = secured.get("/health", headers={"Authorization": header})
    assert_error(r, 401, "Unauthorized")


def test_scheme_is_case_insensitive(secured):
    assert secured.get("/health", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_no_key_configured_means_open(client):
    assert client.get("/health").status_code == 200


def test_compare_is_constant_time(secured, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    secured.get("/health", headers={"Authorization": "Bearer nope"})
    secured.get("/health", headers={"Authorization": f"Bearer {KEY}"})
    assert calls == [(b"nope", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_routing_errors_need_the_key_too(secured):
    # Without the key a client cannot tell which paths or methods exist.
    assert_error(secured.get("/nope"), 401, "Unauthorized")
    assert_error(secured.post("/freeze/status"), 401, "Unauthorized")
    assert_error(secured.options("/conf"), 401, "Unauthorized")
    auth = {"Authorization": f"Bearer {KEY}"}
    assert_error(secured.get("/nope", headers=auth), 404, "Not found")
    assert_error(secured.post("/freeze/status", headers=auth), 405, "Method not allowed")
    assert secured.options("/conf", headers=auth).headers["allow"] == "GET, OPTIONS, POST"
