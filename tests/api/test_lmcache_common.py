"""LMCache's common admin endpoints.

/backends, /loglevel, /threads, /periodic-threads*, /env, /metrics/reset, and the /meta fields
LMCache has.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from api_testlib import assert_error, make_caches, make_config, make_engine
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.stats.periodic import PeriodicThread, RunStats, ThreadLevel
from lmcache_native.stats.redact import is_secret_name
from prometheus_client.parser import text_string_to_metric_families

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
    assert cpu["healthy"] is True
    assert cpu["health"] == "healthy"
    assert cpu["bypassed"] is False
    assert cpu["stats"]["puts"] == 4


def test_backends_reports_bypass(client):
    assert client.put("/bypass/add?backend_name=LocalCPUBackend").status_code == 200
    assert client.get("/backends").json()["LocalCPUBackend"]["bypassed"] is True


def test_backends_without_engine(no_engine_client):
    assert_error(no_engine_client.get("/backends"), 503, "LMCache API is unavailable")


# --- /metrics and /metrics/reset -------------------------------------------------------------

LMCACHE_COUNTERS = (
    "num_retrieve_requests",
    "num_store_requests",
    "num_requested_tokens",
    "num_hit_tokens",
    "num_stored_tokens",
    "num_lookup_requests",
    "num_lookup_hits",
    "num_remote_read_bytes",
    "num_remote_write_bytes",
    "local_cpu_evict_count",
)
LMCACHE_GAUGES = (
    "retrieve_hit_rate",
    "lookup_hit_rate",
    "local_cache_usage",
    "local_storage_usage",
    "remote_cache_usage",
    "put_failed_count",
    "lmcache_is_healthy",
    "chunk_statistics_enabled",
    "chunk_statistics_total_requests",
    "chunk_statistics_total_chunks",
    "chunk_statistics_unique_chunks",
    "chunk_statistics_reuse_rate",
)
LMCACHE_HISTOGRAMS = (
    "time_to_retrieve",
    "time_to_store",
    "time_to_lookup",
    "retrieve_speed",
    "store_speed",
)
LABELS = {"model_name": "test-model", "worker_id": "0", "role": "worker", "served_model_name": ""}


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(fams: dict[str, Any], family: str, sample: str) -> float:
    for s in fams[family].samples:
        if s.name == sample:
            assert s.labels == LABELS, s
            return float(s.value)
    raise AssertionError(f"{sample} not in {family}")


def test_metrics_content_type_parses_strictly(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    raw = r.headers["content-type"]
    assert raw == "text/plain; version=0.0.4; charset=utf-8"
    msg = EmailMessage()
    msg["content-type"] = raw
    assert msg.get_content_type() == "text/plain"
    params = [p.split("=", 1)[0].strip().lower() for p in raw.split(";")[1:]]
    assert sorted(params) == ["charset", "version"]  # each parameter once
    assert msg.get_param("charset") == "utf-8"
    assert msg.get_param("version") == "0.0.4"


def test_lmcache_metric_names_types_and_labels(client):
    client.post("/chunk_statistics/start")
    assert client.post("/cache/store?tokens_mock=0,64").status_code == 200
    assert client.post("/cache/retrieve?tokens_mock=0,96").json()["num_retrieved"] == 64
    fams = _families(client.get("/metrics").text)
    for name in LMCACHE_COUNTERS:
        assert fams[f"lmcache:{name}"].type == "counter", name
    for name in LMCACHE_GAUGES:
        assert fams[f"lmcache:{name}"].type == "gauge", name
    for name in LMCACHE_HISTOGRAMS:
        assert fams[f"lmcache:{name}"].type == "histogram", name
    # the same measurements as this project's own series
    assert _sample(fams, "lmcache:num_store_requests", "lmcache:num_store_requests_total") == 1
    assert (
        _sample(fams, "lmcache:num_retrieve_requests", "lmcache:num_retrieve_requests_total") == 1
    )
    assert _sample(fams, "lmcache:num_stored_tokens", "lmcache:num_stored_tokens_total") == 64
    assert _sample(fams, "lmcache:num_requested_tokens", "lmcache:num_requested_tokens_total") == 96
    assert _sample(fams, "lmcache:num_hit_tokens", "lmcache:num_hit_tokens_total") == 64
    assert _sample(fams, "lmcache:retrieve_hit_rate", "lmcache:retrieve_hit_rate") == 64 / 96
    cpu_used = client.get("/backends").json()["LocalCPUBackend"]["used_bytes"]
    assert _sample(fams, "lmcache:local_cache_usage", "lmcache:local_cache_usage") == cpu_used > 0
    assert _sample(fams, "lmcache:time_to_store", "lmcache:time_to_store_count") == 1
    assert _sample(fams, "lmcache:store_speed", "lmcache:store_speed_count") == 1
    assert _sample(fams, "lmcache:lmcache_is_healthy", "lmcache:lmcache_is_healthy") == 1
    assert (
        _sample(fams, "lmcache:chunk_statistics_enabled", "lmcache:chunk_statistics_enabled") == 1
    )
    # this project's names are still there, with the same values
    own = _families(client.get("/metrics").text)
    assert own["lmcache_stored_tokens"].samples[0].value == 64
    assert own["lmcache_store_seconds"].type == "histogram"


def test_lookup_metrics(client, engine):
    client.post("/cache/store?tokens_mock=0,32")
    assert engine.lookup(list(range(64))) == 32
    fams = _families(client.get("/metrics").text)
    assert _sample(fams, "lmcache:num_lookup_requests", "lmcache:num_lookup_requests_total") == 1
    assert _sample(fams, "lmcache:num_lookup_hits", "lmcache:num_lookup_hits_total") == 32
    assert _sample(fams, "lmcache:lookup_hit_rate", "lmcache:lookup_hit_rate") == 0.5
    assert _sample(fams, "lmcache:time_to_lookup", "lmcache:time_to_lookup_count") == 1


def test_metrics_reset_zeroes_counters_and_histograms_not_gauges(client):
    client.post("/cache/store?tokens_mock=0,64")
    client.post("/cache/retrieve?tokens_mock=0,64")
    r = client.post("/metrics/reset")
    assert r.status_code == 200
    assert r.json() == {"status": "success", "message": "Metrics reset"}
    fams = _families(client.get("/metrics").text)
    assert _sample(fams, "lmcache:num_store_requests", "lmcache:num_store_requests_total") == 0
    assert _sample(fams, "lmcache:num_hit_tokens", "lmcache:num_hit_tokens_total") == 0
    assert _sample(fams, "lmcache:time_to_store", "lmcache:time_to_store_count") == 0
    assert fams["lmcache_stored_tokens"].samples[0].value == 0
    tier_puts = [s for s in fams["lmcache_tier_stored_chunks"].samples if s.name.endswith("_total")]
    assert tier_puts[0].value == 0
    # gauges show the current state: the stored chunks are still held
    assert _sample(fams, "lmcache:local_cache_usage", "lmcache:local_cache_usage") > 0
    # and counting starts again from zero
    client.post("/cache/retrieve?tokens_mock=0,32")
    fams = _families(client.get("/metrics").text)
    assert _sample(fams, "lmcache:num_hit_tokens", "lmcache:num_hit_tokens_total") == 32
    tier_hits = [s for s in fams["lmcache_tier_hits"].samples if s.name.endswith("_total")]
    assert tier_hits[0].value == 2


def test_metrics_reset_without_engine(no_engine_client):
    assert_error(no_engine_client.post("/metrics/reset"), 503, "LMCache API is unavailable")


# --- /loglevel -------------------------------------------------------------------------------


@pytest.fixture
def test_logger() -> Iterator[logging.Logger]:
    lg = logging.getLogger("lmcache_native.test_loglevel")
    handler = logging.StreamHandler()
    lg.addHandler(handler)
    lg.setLevel(logging.WARNING)
    try:
        yield lg
    finally:
        lg.removeHandler(handler)
        lg.setLevel(logging.NOTSET)


@pytest.mark.usefixtures("test_logger")
def test_loglevel_lists_loggers(client):
    r = client.get("/loglevel")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert lines[0] == "=== Loggers and Levels ==="
    assert "lmcache_native.test_loglevel: WARNING" in lines


def test_loglevel_get_one(client, test_logger):
    r = client.get("/loglevel", params={"logger_name": test_logger.name})
    assert r.status_code == 200
    assert r.text == f"{test_logger.name}: WARNING"


def test_loglevel_get_sets_level_like_lmcache(client, test_logger):
    r = client.get("/loglevel", params={"logger_name": test_logger.name, "level": "debug"})
    assert r.status_code == 200
    assert r.text == f"Set {test_logger.name} level to DEBUG (including all handlers)"
    assert test_logger.level == logging.DEBUG
    assert all(h.level == logging.DEBUG for h in test_logger.handlers)


def test_loglevel_post_query_and_json(client, test_logger):
    r = client.post("/loglevel", params={"logger_name": test_logger.name, "level": "ERROR"})
    assert r.status_code == 200, r.text
    assert test_logger.level == logging.ERROR
    r = client.post("/loglevel", json={"logger_name": test_logger.name, "level": "info"})
    assert r.status_code == 200, r.text
    assert test_logger.level == logging.INFO
    assert client.get("/loglevel", params={"logger_name": test_logger.name}).text.endswith("INFO")


def test_loglevel_bad_level(client, test_logger):
    for call in (
        lambda: client.get("/loglevel", params={"logger_name": test_logger.name, "level": "LOUD"}),
        lambda: client.post("/loglevel", json={"logger_name": test_logger.name, "level": "x"}),
        # an attribute of the logging module that is not a level
        lambda: client.get(
            "/loglevel", params={"logger_name": test_logger.name, "level": "BASIC_FORMAT"}
        ),
    ):
        body = assert_error(call(), 400, "Invalid log level")
        assert "Invalid log level" in body["message"]
    assert test_logger.level == logging.WARNING


def test_loglevel_errors(client):
    assert_error(
        client.get("/loglevel", params={"logger_name": "no.such.logger.anywhere"}),
        404,
        "Logger not found",
    )
    assert "no.such.logger.anywhere" not in logging.Logger.manager.loggerDict
    assert_error(client.get("/loglevel", params={"level": "INFO"}), 400, "Missing parameters")
    assert_error(client.post("/loglevel"), 400, "Missing parameters")
    assert_error(
        client.post("/loglevel", json={"logger_name": "x", "level": "INFO", "extra": 1}),
        400,
        "Invalid request body",
    )
    r = client.post("/loglevel", content=b"level=INFO", headers={"content-type": "text/plain"})
    assert_error(r, 415, "Unsupported Media Type")


def test_loglevel_root(client):
    root = logging.getLogger()
    before = root.level
    try:
        assert (
            client.get("/loglevel", params={"logger_name": "root", "level": "ERROR"}).status_code
            == 200
        )
        assert root.level == logging.ERROR
        assert client.get("/loglevel", params={"logger_name": "root"}).text == "root: ERROR"
    finally:
        root.setLevel(before)


# --- /threads --------------------------------------------------------------------------------


def test_threads_lists_live_threads_with_stacks(client):
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="adminapi-probe-thread", daemon=True)
    t.start()
    try:
        r = client.get("/threads")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert f"Thread: adminapi-probe-thread (id={t.ident}" in r.text
        assert "MainThread" in r.text
        assert "=== Thread Summary ===" in r.text
        total = int(re.search(r"Total threads: (\d+)", r.text).group(1))
        assert total == r.text.count("Thread: ")
        # the probe thread's stack shows where it waits
        block = r.text.split("Thread: adminapi-probe-thread", 1)[1].split("\n\nThread: ")[0]
        assert "in wait" in block

        by_name = client.get("/threads", params={"name": "ADMINAPI-PROBE"}).text
        assert by_name.count("Thread: ") == 1
        assert "Total threads: 1" in by_name
        by_id = client.get("/threads", params={"thread_id": t.ident}).text
        assert by_id.count("Thread: ") == 1
        assert "adminapi-probe-thread" in by_id
        none = client.get("/threads", params={"name": "no-such-thread-name"}).text
        assert "Total threads: 0" in none
    finally:
        stop.set()
        t.join()


def test_threads_bad_id(client):
    assert_error(client.get("/threads", params={"thread_id": "abc"}), 400, "Invalid thread_id")


# --- /periodic-threads -----------------------------------------------------------------------


def test_periodic_threads_lists_engine_threads(client):
    r = client.get("/periodic-threads")
    assert r.status_code == 200
    body = r.json()
    names = [t["name"] for t in body["threads"]]
    assert "chunk-statistics-auto-exit" in names
    stats = next(t for t in body["threads"] if t["name"] == "chunk-statistics-auto-exit")
    assert stats["level"] == "low"
    assert stats["interval"] == 10.0
    assert stats["is_running"] is True
    assert stats["alive"] is True
    assert stats["healthy"] is True
    assert stats["total_runs"] >= 1
    assert stats["last_run_time"] > 0
    assert body["summary"]["total_count"] == len(names)
    assert body["summary"]["by_level"]["low"]["total"] == 1
    assert set(body["summary"]["by_level"]) == {"critical", "high", "medium", "low"}


def test_periodic_threads_with_writer(make_client, tmp_path):
    config = make_config(local_disk=str(tmp_path / "disk"), max_local_disk_size=0.01)
    eng = make_engine(config, make_caches())
    try:
        c = make_client(eng, config)
        assert c.post("/cache/store?tokens_mock=0,32").status_code == 200
        assert eng.flush(30)
        writer = c.get("/periodic-threads/lmcache-storage-writer")
        assert writer.status_code == 200, writer.text
        w = writer.json()
        assert w["level"] == "high"
        assert w["interval"] is None
        assert w["is_running"] is True
        assert w["is_active"] is True
        assert w["healthy"] is True
        assert w["total_runs"] == 2
        assert w["failed_runs"] == 0
        assert w["last_run_ago"] >= 0
        assert w["thread_id"] is not None
        high = c.get("/periodic-threads", params={"level": "HIGH"}).json()["threads"]
        assert [t["name"] for t in high] == ["lmcache-storage-writer"]
        assert c.get("/periodic-threads-health").json() == {
            "healthy": True,
            "unhealthy_count": 0,
            "unhealthy_threads": [],
        }
    finally:
        eng.close()
    # a closed engine's writer has stopped on purpose: not running, not unhealthy
    w = c.get("/periodic-threads/lmcache-storage-writer").json()
    assert w["is_running"] is False
    assert w["stopped"] is True
    assert w["healthy"] is True


def test_periodic_threads_health_reports_a_dead_thread(client, engine):
    dead = threading.Thread(target=lambda: None, name="dead")
    dead.start()
    dead.join()
    engine.background_threads.register_probe(
        "test-dead-thread", ThreadLevel.CRITICAL, lambda: dead, RunStats
    )
    body = client.get("/periodic-threads-health").json()
    assert body["healthy"] is False
    assert body["unhealthy_count"] == 1
    assert body["unhealthy_threads"][0]["name"] == "test-dead-thread"
    assert body["unhealthy_threads"][0]["level"] == "critical"
    fams = _families(client.get("/metrics").text)
    assert _sample(fams, "lmcache:lmcache_is_healthy", "lmcache:lmcache_is_healthy") == 0


def test_periodic_threads_filters_and_errors(client):
    assert client.get("/periodic-threads", params={"running_only": "true"}).status_code == 200
    assert client.get("/periodic-threads", params={"active_only": "true"}).status_code == 200
    body = assert_error(
        client.get("/periodic-threads", params={"level": "urgent"}), 400, "Invalid level"
    )
    assert "critical, high, medium, low" in body["message"]
    body = assert_error(client.get("/periodic-threads/no-such-thread"), 404, "Thread not found")
    assert "no-such-thread" in body["message"]


def test_periodic_threads_without_engine(no_engine_client):
    for path in ("/periodic-threads", "/periodic-threads/x", "/periodic-threads-health"):
        assert_error(no_engine_client.get(path), 503, "LMCache API is unavailable")


def test_periodic_thread_records_failures():
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return "ok"

    t = PeriodicThread("unit", 60.0, fn)
    t.run_once()
    t.run_once()
    runs = t.run_stats()
    assert runs.total_runs == 2
    assert runs.failed_runs == 1
    assert runs.success is False
    assert runs.message == "RuntimeError: boom"


# --- /env ------------------------------------------------------------------------------------

SECRETS = {
    "LMCACHE_REMOTE_URL": "redis://alice:hunter2-url-pw@cache.example:6379/0",
    "LMCACHE_INTERNAL_API_SERVER_API_KEY": "sk-lmcache-api-key-value",
    "VLLM_API_KEY": "vllm-api-key-value",
    "HF_TOKEN": "hf_token_value_123",
    "LMCACHE_S3_SECRET_ACCESS_KEY": "s3-secret-value",
    "LMCACHE_REDIS_PASSWORD": "redis-password-value",
    "LMCACHE_PASS": "plain-pass-value",
    "VLLM_AUTH_HEADER": "Bearer auth-header-value",
    "LMCACHE_CREDENTIALS_FILE": "credential-file-value",
    "VLLM_LIST_OF_URLS": "redis://:only-pw-value@h1:1,valkey://bob:second-pw-value@h2:2",
    "MY_UNLISTED_SECRET": "unlisted-secret-value",
    "DATABASE_URL": "postgres://u:db-password-value@db/x",
}


def test_env_allow_list_and_masking(client, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LMCACHE_CHUNK_SIZE", "256")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("NOT_ALLOWED_PLAIN", "plain")
    r = client.get("/env")
    assert r.status_code == 200
    env = r.json()
    assert list(env) == sorted(env)
    assert env["LMCACHE_CHUNK_SIZE"] == "256"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "NOT_ALLOWED_PLAIN" not in env
    assert "MY_UNLISTED_SECRET" not in env
    assert "DATABASE_URL" not in env
    for name in (
        "LMCACHE_INTERNAL_API_SERVER_API_KEY",
        "VLLM_API_KEY",
        "HF_TOKEN",
        "LMCACHE_S3_SECRET_ACCESS_KEY",
        "LMCACHE_REDIS_PASSWORD",
        "LMCACHE_PASS",
        "VLLM_AUTH_HEADER",
        "LMCACHE_CREDENTIALS_FILE",
    ):
        assert env[name] == "***", name
    assert env["LMCACHE_REMOTE_URL"] == "redis://alice:***@cache.example:6379/0"
    assert env["VLLM_LIST_OF_URLS"] == "redis://:***@h1:1,valkey://bob:***@h2:2"
    for value in SECRETS.values():
        secret_part = value.split("@")[0].rsplit(":", 1)[-1] if "@" in value else value
        assert secret_part not in r.text, secret_part


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("HF_TOKEN", True),
        ("apiKey", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("REDIS_PASSWD", True),
        ("LMCACHE_AUTHORIZATION", True),
        ("VLLM_ACCESSTOKEN", True),
        ("LMCACHE_CHUNK_SIZE", False),
        ("CUDA_VISIBLE_DEVICES", False),
        ("VLLM_HOST_IP", False),
    ],
)
def test_is_secret_name(name, secret):
    assert is_secret_name(name) is secret


def test_env_needs_no_engine(no_engine_client, monkeypatch):
    monkeypatch.setenv("LMCACHE_TEST_ONLY", "1")
    assert no_engine_client.get("/env").json()["LMCACHE_TEST_ONLY"] == "1"


# --- /meta, chunk statistics names -----------------------------------------------------------


def test_meta_has_lmcache_fields(client):
    meta = client.get("/meta").json()
    assert meta["engine_id"] == "lmcache_default_instance"
    assert meta["local_worker_id"] == 0
    assert meta["local_world_size"] == 1
    assert meta["first_rank"] == 0
    assert meta["kv_connector_extra_config"] == {}


def test_meta_masks_connector_extra_config(make_client, config):
    metadata = EngineMetadata(
        model_name="m",
        extra={
            "vllm_engine_id": "engine-7",
            "kv_connector_extra_config": {
                "lmcache.remote_url": "redis://u:meta-pw-value@h:1",
                "lmcache.api_key": "meta-key-value",
                "lmcache.chunk_size": 256,
            },
        },
    )
    eng = CacheEngine(config, metadata)
    try:
        r = make_client(eng, config).get("/meta")
        meta = r.json()
        assert meta["engine_id"] == "engine-7"
        assert meta["kv_connector_extra_config"] == {
            "lmcache.remote_url": "redis://u:***@h:1",
            "lmcache.api_key": "***",
            "lmcache.chunk_size": 256,
        }
        assert "meta-pw-value" not in r.text
        assert "meta-key-value" not in r.text
    finally:
        eng.close()


def test_chunk_statistics_answers_both_names(client):
    client.post("/chunk_statistics/start")
    client.post("/cache/store?tokens_mock=0,64")
    body = client.get("/chunk_statistics/status").json()
    assert body["enabled"] is True
    assert body["is_collecting"] is True
    assert body["total_requests"] == body["requests"] == 1
    client.post("/chunk_statistics/stop")
    body = client.get("/chunk_statistics/status").json()
    assert body["enabled"] is False
    assert body["is_collecting"] is False


# --- API key ---------------------------------------------------------------------------------

NEW_ROUTES = [
    ("get", "/backends"),
    ("get", "/loglevel"),
    ("post", "/loglevel?logger_name=x&level=INFO"),
    ("get", "/threads"),
    ("get", "/periodic-threads"),
    ("get", "/periodic-threads/x"),
    ("get", "/periodic-threads-health"),
    ("get", "/env"),
    ("post", "/metrics/reset"),
]


@pytest.mark.parametrize(("method", "path"), NEW_ROUTES)
def test_new_routes_require_the_api_key(make_client, engine, method, path):
    c = make_client(engine, make_config(internal_api_server_api_key="k-0123456789"))
    assert_error(getattr(c, method)(path), 401, "Unauthorized")
    ok = getattr(c, method)(path, headers={"Authorization": "Bearer k-0123456789"})
    assert ok.status_code in (200, 404), ok.text
