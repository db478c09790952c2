"""remote_url forms read as LMCache reads them; errors and shown values never hold passwords."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmcache_native.config import LMCacheEngineConfig, mask_url_credentials
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.errors import ConfigError
from lmcache_native.storage import RemoteBackend
from lmcache_native.storage.remote import fs_url_path
from lmcache_native.storage.remote_url import parse_remote_url

from tests.storage.conftest import NAMESPACE, MakeChunk, key_of, same_bytes


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("fs:///tmp/lmcache", "/tmp/lmcache"),
        ("fs://localhost:0/tmp/lmcache", "/tmp/lmcache"),  # LMCache's form: host:port ignored
        ("fs://127.0.0.1:6379/data/kv/", "/data/kv"),
        ("fs://[::1]:80/srv/kv", "/srv/kv"),
        ("fs://:0/abs", "/abs"),
        ("fs://host:1234/tmp/x?unused=1", "/tmp/x"),
        ("fs://rel/dir", "rel/dir"),  # no port: a relative directory, as before
        ("fs://localhost/tmp/x", "localhost/tmp/x"),
    ],
)
def test_fs_url_forms(url: str, path: str) -> None:
    assert fs_url_path(url) == Path(path)
    assert parse_remote_url(url).path == Path(path)


@pytest.mark.parametrize("url", ["fs://", "fs://host:1234", "fs://host:1234/", "redis://h:1"])
def test_fs_url_without_a_directory_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        fs_url_path(url)


def test_fs_host_port_store_writes_the_absolute_directory(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    url = f"fs://localhost:0{tmp_path}/store"
    backend = RemoteBackend(url, pool.allocate, namespace=NAMESPACE)
    buf = make_chunk(3)
    assert backend.put(key_of(3), buf)
    got = backend.get(key_of(3))
    assert got is not None
    assert same_bytes(got.tensor, buf.tensor)
    got.unref()
    buf.unref()
    assert len(list((tmp_path / "store").iterdir())) == 1
    assert not Path("localhost:0").exists()


def test_sentinel_url_hosts_credentials_and_master_name() -> None:
    spec = parse_remote_url("redis-sentinel://user:p@ss:w/rd@h1:26379,h2:26380", environ={})
    assert spec.kind == "sentinel"
    assert spec.nodes == (("h1", 26379), ("h2", 26380))
    assert (spec.username, spec.password) == ("user", "p@ss:w/rd")
    assert spec.service_name == "redismaster"  # LMCache's default
    assert "p@ss" not in repr(spec)


def test_sentinel_master_name_sources_in_order() -> None:
    url = "redis-sentinel://h1:1,h2:2"
    env = {"REDIS_SERVICE_NAME": "from-env"}
    extra = {"redis_service_name": "from-extra"}
    assert parse_remote_url(url, environ=env).service_name == "from-env"
    assert parse_remote_url(url, extra, environ=env).service_name == "from-extra"
    assert parse_remote_url(url + "/from-path", extra, environ=env).service_name == "from-path"


def test_sentinel_default_port_and_ipv6() -> None:
    spec = parse_remote_url("redis-sentinel://sentinel-a,[::1]:26390", environ={})
    assert spec.nodes == (("sentinel-a", 26379), ("::1", 26390))


def test_cluster_url() -> None:
    spec = parse_remote_url("redis-cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert spec.kind == "cluster"
    assert spec.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert spec.username is None
    assert spec.password == "pw"


def test_valkey_standalone_and_cluster() -> None:
    spec = parse_remote_url("valkey://vk:6380/2")
    assert (spec.kind, spec.nodes, spec.db) == ("redis", (("vk", 6380),), 2)
    extra = {"valkey_username": "u", "valkey_password": "pw", "valkey_database": 3}
    spec = parse_remote_url("valkey://vk:6380", extra)
    assert (spec.username, spec.password, spec.db) == ("u", "pw", 3)
    spec = parse_remote_url("valkey://a:1,b:2", {"valkey_mode": "cluster"})
    assert (spec.kind, spec.nodes) == ("cluster", (("a", 1), ("b", 2)))
    with pytest.raises(ValueError, match="valkey_mode"):
        parse_remote_url("valkey://a:1,b:2")
    with pytest.raises(ValueError, match="valkey_mode"):
        parse_remote_url("valkey://a:1", {"valkey_mode": "sharded"})


def test_redis_mode_cluster_is_lmcaches_newer_cluster_spelling() -> None:
    spec = parse_remote_url("redis://a:1,b:2", {"redis_mode": "cluster"})
    assert (spec.kind, spec.nodes) == ("cluster", (("a", 1), ("b", 2)))
    assert parse_remote_url("redis://a:1/0").kind == "redis"


@pytest.mark.parametrize(
    "url",
    [
        "redis-cluster://alice:hunter2@",
        "redis-cluster://alice:hunter2@h1:70000",
        "redis-cluster://alice:hunter2@h1:1,,h2:2",
        "redis-cluster://alice:hunter2@h1:1/5",
        "redis-sentinel://alice:hunter2@h1:1?ssl=true",
        "valkey://alice:hunter2@a:1,b:2/3",
        "memcached://alice:hunter2@h:1",
    ],
)
def test_malformed_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ValueError, match=r"URL|remote_url") as exc:
        parse_remote_url(url)
    assert "hunter2" not in str(exc.value)
    with pytest.raises(ConfigError) as cexc:
        LMCacheEngineConfig.from_mapping({"remote_url": url}, "test")
    assert "hunter2" not in str(cexc.value)
    assert cexc.value.key == "remote_url"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis-sentinel://u:pw@h1:1,h2:2/name", "redis-sentinel://u:***@h1:1,h2:2/name"),
        ("redis-cluster://:pw@h1:1,h2:2", "redis-cluster://:***@h1:1,h2:2"),
        ("redis-cluster://u:p/w?x@y@h1:1,h2:2", "redis-cluster://u:***@h1:1,h2:2"),
        ("valkey://token@h:1", "valkey://***@h:1"),
        ("redis://h:1/0?password=pw&db=0", "redis://h:1/0?password=***&db=0"),
        ("redis-cluster://h1:1,h2:2", "redis-cluster://h1:1,h2:2"),
        ("fs://localhost:0/data/a@b", "fs://localhost:0/data/a@b"),
    ],
)
def test_masking_covers_every_scheme(url: str, shown: str) -> None:
    assert mask_url_credentials(url) == shown


def test_conf_output_masks_url_and_extra_config_passwords() -> None:
    cfg = LMCacheEngineConfig.from_mapping(
        {
            "remote_url": "redis-cluster://admin:topsecret@127.0.0.1:7000,127.0.0.1:7001",
            "extra_config": {
                "valkey_password": "vk-secret",
                "valkey_mode": "cluster",
                "redis_service_name": "mymaster",
                "bypass_threshold": 3,
            },
        },
        "test",
    )
    shown = cfg.to_dict()
    assert shown["remote_url"] == "redis-cluster://admin:***@127.0.0.1:7000,127.0.0.1:7001"
    assert shown["extra_config"] == {
        "valkey_password": "***",
        "valkey_mode": "cluster",
        "redis_service_name": "mymaster",
        "bypass_threshold": 3,
    }
    # the real values are still what the engine uses
    assert cfg.get("extra_config")["valkey_password"] == "vk-secret"
    assert "topsecret" in cfg.get("remote_url")


def test_backend_refuses_a_bad_url_without_the_password(pool: ChunkBufferPool) -> None:
    with pytest.raises(ValueError, match="out of range") as exc:
        RemoteBackend("redis-cluster://u:hunter2@h1:99999", pool.allocate)
    assert "hunter2" not in str(exc.value)
