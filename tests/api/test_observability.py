"""/metrics and /health."""

from __future__ import annotations

from api_testlib import assert_error
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples, needle: str) -> float:
    return sum(
        v for (name, _), v in samples.items() if needle in name and not name.endswith("_created")
    )


def test_metrics_exposition_format(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert _samples(r.text)  # parses, and is not empty


def test_metrics_move_when_the_engine_works(client):
    before = _samples(client.get("/metrics").text)
    client.post("/cache/store?tokens_mock=0,32")
    client.post("/cache/retrieve?tokens_mock=0,32")
    client.post("/cache/retrieve?tokens_mock=500,532")
    after = _samples(client.get("/metrics").text)
    changed = {k for k in after if after[k] != before.get(k, 0.0) and not k[0].endswith("_created")}
    assert changed, "no metric moved after a store and two retrieves"
    assert _total(after, "stored") > _total(before, "stored")
    assert _total(after, "retrieved") > _total(before, "retrieved")
    assert _total(after, "hit") > _total(before, "hit")
    assert _total(after, "miss") > _total(before, "miss")


def test_metrics_without_engine(no_engine_client):
    assert_error(no_engine_client.get("/metrics"), 503, "LMCache API is unavailable")


def test_health(client, no_engine_client, unregistered_client):
    assert client.get("/health").json() == {
        "status": "ok",
        "engine": True,
        "kv_cache_registered": True,
    }
    assert no_engine_client.get("/health").json() == {
        "status": "ok",
        "engine": False,
        "kv_cache_registered": False,
    }
    assert unregistered_client.get("/health").json() == {
        "status": "ok",
        "engine": True,
        "kv_cache_registered": False,
    }
