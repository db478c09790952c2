"""LMCache's common admin endpoints: /backends, /loglevel, /threads, /periodic-threads*, /env,
/metrics/reset, and the /meta fields LMCache has."""

from __future__ import annotations

from api_testlib import assert_error

# --- /backends -------------------------------------------------------------------------------


def test_backends_lists_each_tier_with_size_and_health(client):
    client.post("/cache/store?tokens_mock=0,64")
    r = client.get("/backends")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["LocalCPUBackend"]
    cpu = body["LocalCPUBackend"]
    assert cpu["type"] == "LocalCPUBackend"
    assert cpu["name"] == "LocalCPUBackend"
    assert cpu["entries"] == 4
    assert cpu["capacity_bytes"] > 0
    assert 0 < cpu["used_bytes"] <= cpu["capacity_bytes"]
    assert cpu["usage"] == cpu["used_bytes"] / cpu["capacity_bytes"]
    assert cpu["healthy"] is True and cpu["health"] == "healthy"
    assert cpu["bypassed"] is False
    assert cpu["stats"]["puts"] == 4


def test_backends_reports_bypass(client):
    assert client.put("/bypass/add?backend_name=LocalCPUBackend").status_code == 200
    assert client.get("/backends").json()["LocalCPUBackend"]["bypassed"] is True


def test_backends_without_engine(no_engine_client):
    assert_error(no_engine_client.get("/backends"), 503, "LMCache API is unavailable")
