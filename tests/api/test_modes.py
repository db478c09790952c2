"""Freeze, hot cache and bypass endpoints."""

from __future__ import annotations

import pytest
from api_testlib import assert_error, spec_calls

# --- freeze and hot cache ----------------------------------------------------------------------


def _retrieved(client, store_first: bool = False) -> int:
    """Tokens 0..31 retrieved (after storing them again when ``store_first``)."""
    if store_first:
        client.post("/cache/store?tokens_mock=0,32")
    return client.post("/cache/retrieve?tokens_mock=0,32").json()["num_retrieved"]


# path, body field, message label, engine attribute, state at start
SWITCHES = [
    ("/freeze", "freeze", "Freeze mode", "is_frozen", False),
    ("/hot_cache", "hot_cache", "Hot cache", "hot_cache_enabled", True),
]


@pytest.mark.parametrize(("path", "field", "label", "attribute", "initial"), SWITCHES)
def test_switch_cycle(client, engine, path, field, label, attribute, initial):
    def body(on: bool, message: str) -> dict:
        return {"status": "success", field: on, "message": message}

    def state(on: bool) -> str:
        return "enabled" if on else "disabled"

    assert client.get(f"{path}/status").json() == body(initial, f"{label} is {state(initial)}")
    for on in (not initial, initial):
        r = client.put(f"{path}/{'enable' if on else 'disable'}")
        assert r.status_code == 200
        assert r.json() == body(on, f"{label} {state(on)} successfully")
        assert getattr(engine, attribute) is on
        assert client.get(f"{path}/status").json() == body(on, f"{label} is {state(on)}")


def test_freeze_keeps_cpu_hits(client):
    client.post("/cache/store?tokens_mock=0,32")
    client.put("/freeze/enable")
    assert _retrieved(client) == 32
    assert client.post("/cache/store?tokens_mock=100,132").json()["num_stored_tokens"] == 0
    assert client.post("/cache/retrieve?tokens_mock=100,132").json()["num_retrieved"] == 0


# --- hot cache -------------------------------------------------------------------------------


def test_hot_cache_disable_clears_cpu_tier(client):
    client.post("/cache/store?tokens_mock=0,32")
    client.put("/hot_cache/disable")
    assert _retrieved(client) == 0
    assert _retrieved(client, store_first=True) == 0
    client.put("/hot_cache/enable")
    assert _retrieved(client, store_first=True) == 32


# --- bypass ----------------------------------------------------------------------------------


def test_bypass_list(client, engine):
    r = client.get("/bypass/list")
    assert r.status_code == 200
    assert r.json() == {
        "status": "success",
        "bypassed_backends": [],
        "all_backends": engine.all_backends(),
    }
    assert "LocalCPUBackend" in r.json()["all_backends"]


def _bypass_answer(added: bool, was: bool, backends: list[str]) -> dict:
    """The body of ``/bypass/add`` (``added``) or ``/bypass/remove`` for LocalCPUBackend."""
    return {
        "status": "success",
        "backend_name": "LocalCPUBackend",
        "bypassed": added,
        "was_already_bypassed" if added else "was_bypassed": was,
        "bypassed_backends": backends,
    }


def test_bypass_add_and_remove(client, engine):
    r = client.put("/bypass/add?backend_name=LocalCPUBackend")
    assert r.json() == _bypass_answer(True, False, ["LocalCPUBackend"])
    assert engine.bypassed_backends() == ["LocalCPUBackend"]
    r = client.put("/bypass/add?backend_name=LocalCPUBackend")
    assert r.json()["was_already_bypassed"] is True
    assert client.get("/bypass/list").json()["bypassed_backends"] == ["LocalCPUBackend"]

    r = client.put("/bypass/remove?backend_name=LocalCPUBackend")
    assert r.json() == _bypass_answer(False, True, [])
    r = client.put("/bypass/remove?backend_name=LocalCPUBackend")
    assert r.json()["was_bypassed"] is False


def test_bypassed_cpu_tier_is_skipped(client):
    client.post("/cache/store?tokens_mock=0,32")
    client.put("/bypass/add?backend_name=LocalCPUBackend")
    assert _retrieved(client) == 0
    client.put("/bypass/remove?backend_name=LocalCPUBackend")
    assert _retrieved(client) == 32


@pytest.mark.parametrize("action", ["add", "remove"])
def test_bypass_unknown_backend(client, engine, action):
    r = client.put(f"/bypass/{action}?backend_name=FooBackend")
    assert_error(
        r,
        400,
        "Unknown backend",
        f"Backend 'FooBackend' not found. Available: {engine.all_backends()}",
    )


@pytest.mark.parametrize("action", ["add", "remove"])
def test_bypass_missing_name(client, action):
    assert_error(
        client.put(f"/bypass/{action}"), 400, "Missing parameter", "backend_name is required"
    )


@pytest.mark.parametrize(("method", "path"), spec_calls("/freeze/", "/hot_cache/", "/bypass/"))
def test_modes_503_without_engine(no_engine_client, method, path):
    body = assert_error(getattr(no_engine_client, method)(path), 503, "LMCache API is unavailable")
    assert body["message"] == "LMCache engine not configured."
