"""The config table: LMCache key names, load order, validation, runtime updates and listeners."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from lmcache_native.config import (
    CONFIG_DEFINITIONS,
    CONFIG_FILE_ENV,
    EXTRA_CONFIG_KEYS,
    LMCacheEngineConfig,
)
from lmcache_native.errors import ConfigError

# The keys the engine issue names, with LMCache's defaults (host: 127.0.0.1 by design).
REQUIRED = {
    "chunk_size": 256,
    "local_cpu": True,
    "max_local_cpu_size": 5.0,
    "local_disk": None,
    "max_local_disk_size": 5.0,
    "remote_url": None,
    "remote_serde": "naive",
    "save_unfull_chunk": False,
    "save_decode_cache": False,
    "min_retrieve_tokens": 0,
    "cache_policy": "LRU",
    "pre_caching_hash_algorithm": "builtin",
    "blocking_timeout_secs": 10,
    "enable_chunk_statistics": False,
    "chunk_statistics_auto_start_statistics": False,
    "chunk_statistics_auto_exit_timeout_hours": 0.0,
    "chunk_statistics_auto_exit_target_unique_chunks": 0,
    "internal_api_server_enabled": False,
    "internal_api_server_host": "127.0.0.1",
    "internal_api_server_port_start": 6999,
    "internal_api_server_api_key": None,
    "extra_config": None,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for d in CONFIG_DEFINITIONS.values():
        monkeypatch.delenv(d.env_var, raising=False)
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_table_has_the_lmcache_keys_and_defaults() -> None:
    cfg = LMCacheEngineConfig.from_defaults()
    for name, default in REQUIRED.items():
        assert name in CONFIG_DEFINITIONS, name
        assert cfg.get(name) == default, name
    for name, d in CONFIG_DEFINITIONS.items():
        assert d.name == name
        assert d.env_var == "LMCACHE_" + name.upper()
        assert d.description
    assert CONFIG_DEFINITIONS["chunk_size"].mutable is False
    for name in (
        "min_retrieve_tokens",
        "save_unfull_chunk",
        "save_decode_cache",
        "max_local_cpu_size",
    ):
        assert CONFIG_DEFINITIONS[name].mutable is True


def test_load_order_defaults_file_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write_yaml(
        tmp_path / "c.yaml",
        "chunk_size: 64\nmin_retrieve_tokens: 5\nsave_unfull_chunk: true\nlocal_disk: file:///tmp/x\n",
    )
    monkeypatch.setenv("LMCACHE_MIN_RETRIEVE_TOKENS", "7")
    monkeypatch.setenv("LMCACHE_SAVE_UNFULL_CHUNK", "False")
    cfg = LMCacheEngineConfig.load(f, overrides={"save_unfull_chunk": True})
    assert cfg.get("chunk_size") == 64  # file over default
    assert cfg.get("min_retrieve_tokens") == 7  # env over file
    assert cfg.get("save_unfull_chunk") is True  # override over env
    assert cfg.get("local_disk") == "/tmp/x"  # file:// stripped
    assert cfg.get("max_local_cpu_size") == 5.0  # default
    assert cfg.source_file == str(f)


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write_yaml(tmp_path / "c.yaml", "cache_policy: lfu\nremote_url: fs:///tmp/store\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(f))
    cfg = LMCacheEngineConfig.load()
    assert cfg.get("cache_policy") == "LFU"
    assert cfg.get("remote_url") == "fs:///tmp/store"


def test_env_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_CHUNK_SIZE", "128")
    monkeypatch.setenv("LMCACHE_LOCAL_CPU", "off")
    monkeypatch.setenv("LMCACHE_EXTRA_CONFIG", json.dumps({"a": 1}))
    monkeypatch.setenv("LMCACHE_REMOTE_URL", "redis://localhost:6379")
    cfg = LMCacheEngineConfig.from_env()
    assert cfg.get("chunk_size") == 128
    assert cfg.get("local_cpu") is False
    assert cfg.get("extra_config") == {"a": 1}
    assert cfg.extra("a") == 1
    assert cfg.extra("b", 2) == 2
    assert cfg.get("remote_url") == "redis://localhost:6379"


def test_unknown_file_keys_warn_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write_yaml(tmp_path / "c.yaml", "chunk_size: 32\nenable_p2p: true\nfoo_bar: 1\n")
    with caplog.at_level(logging.WARNING):
        cfg = LMCacheEngineConfig.from_file(f)
    assert cfg.get("chunk_size") == 32
    assert "foo_bar" in caplog.text
    assert "enable_p2p" in caplog.text


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("chunk_size: abc\n", "chunk_size", "abc"),
        ("chunk_size: 0\n", "chunk_size", "0"),
        ("local_cpu: maybe\n", "local_cpu", "maybe"),
        ("cache_policy: RANDOM\n", "cache_policy", "RANDOM"),
        ("remote_url: http://x\n", "remote_url", "http://x"),
        ("max_local_cpu_size: -1\n", "max_local_cpu_size", "-1"),
        ("pre_caching_hash_algorithm: md5\n", "pre_caching_hash_algorithm", "md5"),
        ("extra_config: [1, 2]\n", "extra_config", "[1, 2]"),
    ],
)
def test_bad_file_values_name_key_and_value(
    tmp_path: Path, text: str, key: str, value: str
) -> None:
    f = write_yaml(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as ei:
        LMCacheEngineConfig.from_file(f)
    assert key in str(ei.value)
    assert value in str(ei.value)
    assert ei.value.key == key


def test_bad_env_value_names_key_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_MIN_RETRIEVE_TOKENS", "lots")
    with pytest.raises(ConfigError, match=r"min_retrieve_tokens.*lots"):
        LMCacheEngineConfig.from_env()


def test_secret_is_masked_in_messages_and_dict() -> None:
    cfg = LMCacheEngineConfig.from_defaults(internal_api_server_api_key="s3cret")
    assert cfg.get("internal_api_server_api_key") == "s3cret"
    d = cfg.to_dict()
    assert d["internal_api_server_api_key"] == "***"
    assert "s3cret" not in json.dumps(d)
    assert "s3cret" not in repr(cfg)
    assert set(d) == set(CONFIG_DEFINITIONS)
    json.dumps(d)  # JSON-able


@pytest.mark.parametrize(
    ("text", "match"),
    [("- a\n- b\n", "mapping"), ("a: [1,\n", "not valid YAML"), ("\xff\xfe", "UTF-8")],
)
def test_unusable_files(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=match) as ei:
        LMCacheEngineConfig.from_file(f)
    assert "a: [1" not in str(ei.value)  # contents are never echoed


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        LMCacheEngineConfig.from_file(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        LMCacheEngineConfig.from_file(tmp_path)


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no_such_key"):
        LMCacheEngineConfig.from_defaults(no_such_key=1)


def test_update_validates_and_reports_per_key() -> None:
    cfg = LMCacheEngineConfig.from_defaults()
    updated, errors = cfg.update(
        {
            "min_retrieve_tokens": 512,
            "save_decode_cache": True,
            "max_local_cpu_size": 2,  # int accepted for a float key
            "unknown_key": 1,
            "chunk_size": 32,
            "save_unfull_chunk": "yes",
            "blocking_timeout_secs": True,
            "chunk_statistics_auto_exit_target_unique_chunks": -1,
        }
    )
    assert updated == {
        "min_retrieve_tokens": 512,
        "save_decode_cache": True,
        "max_local_cpu_size": 2.0,
    }
    assert errors["unknown_key"] == "Unknown config"
    assert errors["chunk_size"] == "Config is not mutable at runtime"
    assert "expected bool" in errors["save_unfull_chunk"]
    assert "expected int" in errors["blocking_timeout_secs"]
    assert ">= 0" in errors["chunk_statistics_auto_exit_target_unique_chunks"]
    assert cfg.get("min_retrieve_tokens") == 512
    assert cfg.get("chunk_size") == 256
    assert cfg.get("save_unfull_chunk") is False


def test_listeners_see_each_update_and_failures_roll_back() -> None:
    cfg = LMCacheEngineConfig.from_defaults()
    seen: list[tuple[str, object]] = []
    cfg.on_change(lambda n, v: seen.append((n, v)))

    def refuse(name: str, value: object) -> None:
        if name == "max_local_cpu_size" and value == 0.5:
            raise ValueError("too small")

    cfg.on_change(refuse)
    updated, errors = cfg.update({"min_retrieve_tokens": 3, "max_local_cpu_size": 0.5})
    assert updated == {"min_retrieve_tokens": 3}
    assert "too small" in errors["max_local_cpu_size"]
    assert cfg.get("max_local_cpu_size") == 5.0
    assert ("min_retrieve_tokens", 3) in seen
    cfg.remove_listener(refuse)
    assert cfg.update({"max_local_cpu_size": 0.5}) == ({"max_local_cpu_size": 0.5}, {})


def test_get_returns_copies_of_dicts() -> None:
    cfg = LMCacheEngineConfig.from_defaults(extra_config={"x": [1]})
    cfg.get("extra_config")["x"].append(2)
    assert cfg.get("extra_config") == {"x": [1]}
    with pytest.raises(KeyError):
        cfg.get("nope")


def test_former_extra_config_knobs_are_typed_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = LMCacheEngineConfig.from_defaults()
    assert cfg.get("writer_queue_size") == 256
    assert cfg.get("local_disk_fsync") is False
    assert cfg.get("remote_retry_interval_secs") == 1.0
    assert cfg.get("chunk_statistics_auto_exit_check_secs") == 10.0
    assert cfg.get("chunk_statistics_expected_items") == 10_000_000
    assert cfg.get("lookup_lease_secs") == 30.0
    assert cfg.get("lookup_cache_secs") == 2.0
    assert all(not CONFIG_DEFINITIONS[n].mutable for n in EXTRA_CONFIG_KEYS)
    monkeypatch.setenv("LMCACHE_WRITER_QUEUE_SIZE", "64")
    assert LMCacheEngineConfig.from_env().get("writer_queue_size") == 64
    with pytest.raises(ConfigError, match="writer_queue_size"):
        LMCacheEngineConfig.from_defaults(writer_queue_size=0)
    with pytest.raises(ConfigError, match="lookup_lease_secs"):
        LMCacheEngineConfig.from_defaults(lookup_lease_secs=-1.0)


def test_extra_config_still_sets_the_typed_keys(tmp_path: Path) -> None:
    f = write_yaml(
        tmp_path / "c.yaml",
        "extra_config: {writer_queue_size: 8, lookup_cache_secs: 0, local_disk_fsync: 'on'}\n",
    )
    cfg = LMCacheEngineConfig.from_file(f)
    assert cfg.get("writer_queue_size") == 8
    assert cfg.get("lookup_cache_secs") == 0.0
    assert cfg.get("local_disk_fsync") is True
    # extra() answers the typed value for these names, whatever set it
    assert cfg.extra("lookup_cache_secs", 2.0) == 0.0
    assert cfg.extra("lookup_lease_secs", 99.0) == 30.0
    # a top-level value of the same source wins; a later source wins over an earlier one
    both = LMCacheEngineConfig.from_defaults(
        writer_queue_size=16, extra_config={"writer_queue_size": 8}
    )
    assert both.get("writer_queue_size") == 16
    later = LMCacheEngineConfig.load(f, overrides={"extra_config": {"writer_queue_size": 4}})
    assert later.get("writer_queue_size") == 4
    bad = write_yaml(tmp_path / "bad.yaml", "extra_config: {writer_queue_size: many}\n")
    with pytest.raises(ConfigError, match=r"writer_queue_size.*extra_config"):
        LMCacheEngineConfig.from_file(bad)
