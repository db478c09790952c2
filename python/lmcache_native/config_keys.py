"""The configuration keys: one typed table, LMCache's key names.

Every key is defined once in :data:`CONFIG_DEFINITIONS` (name, type, default, environment
variable ``LMCACHE_<NAME>``, runtime mutability, description, bounds). :mod:`lmcache_native.config`
reads and validates values against it; the admin API's ``/conf`` schema and the doctor follow it.

The keys in :data:`EXTRA_CONFIG_KEYS` were once read from ``extra_config``; they are typed keys
now, and a value still given in ``extra_config`` is validated and applied to the key of the same
name (a top-level value from the same source wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CONFIG_FILE_ENV = "LMCACHE_CONFIG_FILE"
ENV_PREFIX = "LMCACHE_"
SECRET_MASK = "***"
# NOTE: a config file is read whole; anything larger is not a config file.
MAX_CONFIG_FILE_BYTES = 1 << 20
# NOTE: bounds that keep derived values representable: GB sizes become byte counts
# (int(size * 2**30)), and blocking_timeout_secs becomes a socket timeout (time_t/timeval).
MAX_SIZE_GB = 1_000_000
MAX_TIMEOUT_SECS = 86400
MAX_QUEUE_ITEMS = 1 << 20
MAX_BLOOM_ITEMS = 1 << 34

CACHE_POLICIES: tuple[str, ...] = ("LRU", "LFU", "FIFO")
# Accepted names (LMCache/vLLM spellings included); lmcache_native.engine.keys maps each to a
# deterministic hash. "builtin" is LMCache's default name; here it means xxh3_64, which (unlike
# Python's hash()) is the same in every process without PYTHONHASHSEED.
HASH_ALGORITHMS: tuple[str, ...] = (
    "builtin",
    "xxh3_64",
    "xxh3_128",
    "xxhash",
    "xxhash_cbor",
    "sha256",
    "sha256_cbor",
    "sha256_cbor_64bit",
)
REMOTE_SCHEMES: tuple[str, ...] = (
    "redis://",
    "rediss://",
    "unix://",
    "redis-sentinel://",
    "redis-cluster://",
    "valkey://",
    "fs://",
)
REMOTE_SERDES: tuple[str, ...] = ("naive",)


@dataclass(frozen=True)
class ConfigDef:
    """One configuration key.

    Attributes:
        name: the key, as in LMCache's YAML files.
        type: ``bool``, ``int``, ``float``, ``str``, ``dict`` or ``list`` (of strings).
        default: the value when nothing sets it.
        env_var: the environment variable that sets it (``LMCACHE_<NAME>``).
        mutable: whether :meth:`LMCacheEngineConfig.update` may change it at runtime.
        description: one line for ``/conf`` readers and the docs.
        optional: whether ``None`` (YAML ``null``) is a valid value.
        choices: the allowed values (after normalisation), if restricted.
        minimum: the smallest allowed number, if bounded.
        maximum: the largest allowed number, if bounded.
        secret: masked as ``"***"`` in :meth:`LMCacheEngineConfig.to_dict` and messages.
        normalize: applied to a well-typed value before the checks (e.g. upper-casing).
    """

    name: str
    type: type
    default: Any
    env_var: str
    mutable: bool
    description: str
    optional: bool = False
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    normalize: Callable[[Any], Any] | None = None

    @property
    def type_name(self) -> str:
        """Human name of the expected type, used in error messages."""
        base = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict", list: "list"}[
            self.type
        ]
        return f"{base} or null" if self.optional else base


def _strip_file_scheme(value: str) -> str:
    return value[len("file://") :] if value.startswith("file://") else value


def _upper(value: str) -> str:
    return value.upper()


def _lower(value: str) -> str:
    return value.lower()


def _def(
    name: str, typ: type, default: Any, mutable: bool, description: str, **kw: Any
) -> ConfigDef:
    return ConfigDef(
        name=name,
        type=typ,
        default=default,
        env_var=ENV_PREFIX + name.upper(),
        mutable=mutable,
        description=description,
        **kw,
    )


_DEFS: list[ConfigDef] = [
    _def(
        "chunk_size", int, 256, False, "Tokens per chunk (the unit of keys and storage).", minimum=1
    ),
    _def("local_cpu", bool, True, False, "Keep chunks in the CPU tier (LocalCPUBackend)."),
    _def(
        "max_local_cpu_size",
        float,
        5.0,
        True,
        "CPU chunk-buffer pool and CPU tier capacity in GB; a change resizes the tier.",
        minimum=0.0,
        maximum=MAX_SIZE_GB,
    ),
    _def(
        "local_disk",
        str,
        None,
        False,
        "Directory of the disk tier (LocalDiskBackend); a file:// prefix is accepted.",
        optional=True,
        normalize=_strip_file_scheme,
    ),
    _def(
        "max_local_disk_size",
        float,
        5.0,
        True,
        "Disk tier capacity in GB; a change evicts down to the new size.",
        minimum=0.0,
        maximum=MAX_SIZE_GB,
    ),
    _def(
        "remote_url",
        str,
        None,
        False,
        "Shared remote tier: redis://host:port[/db], rediss://..., unix://..., "
        "redis-sentinel://h1:p1,h2:p2[/master], redis-cluster://h1:p1,h2:p2, "
        "valkey://host:port (extra_config valkey_mode: cluster for a cluster), or "
        "fs://[host:port]/directory.",
        optional=True,
    ),
    _def(
        "remote_serde",
        str,
        "naive",
        False,
        "Remote value format; 'naive' = the versioned, checksummed chunk format.",
        optional=True,
        normalize=_lower,
        choices=REMOTE_SERDES,
    ),
    _def(
        "save_unfull_chunk",
        bool,
        False,
        True,
        "Also store the last, shorter-than-chunk_size chunk of a request.",
    ),
    _def(
        "save_decode_cache",
        bool,
        False,
        True,
        "Store KV produced during decode (read by the vLLM connector).",
    ),
    _def(
        "use_layerwise",
        bool,
        False,
        False,
        "vLLM connector: copy each layer's KV out as the forward writes it and load layers "
        "ahead of the forward, layer by layer (same chunks and keys as off).",
    ),
    _def(
        "min_retrieve_tokens",
        int,
        0,
        True,
        "Skip a retrieve whose hit is shorter than this many tokens (0 = off).",
        minimum=0,
    ),
    _def(
        "cache_policy",
        str,
        "LRU",
        False,
        "CPU/disk eviction policy: LRU, LFU or FIFO.",
        normalize=_upper,
        choices=CACHE_POLICIES,
    ),
    _def(
        "pre_caching_hash_algorithm",
        str,
        "builtin",
        False,
        "Chunk-key hash; every choice is deterministic across processes ('builtin' = xxh3_64).",
        normalize=_lower,
        choices=HASH_ALGORITHMS,
    ),
    _def(
        "blocking_timeout_secs",
        int,
        10,
        True,
        "Socket timeout (seconds) of every remote call; a change reaches the remote tier.",
        minimum=1,
        maximum=MAX_TIMEOUT_SECS,
    ),
    _def(
        "enable_chunk_statistics",
        bool,
        False,
        False,
        "Enable chunk statistics (the /chunk_statistics endpoints).",
    ),
    _def(
        "chunk_statistics_auto_start_statistics",
        bool,
        False,
        False,
        "Start collecting chunk statistics when the engine starts.",
    ),
    _def(
        "chunk_statistics_auto_exit_timeout_hours",
        float,
        0.0,
        True,
        "Stop collecting after this many hours (0 = never).",
        minimum=0.0,
    ),
    _def(
        "chunk_statistics_auto_exit_target_unique_chunks",
        int,
        0,
        True,
        "Stop collecting once this many unique chunks were seen (0 = never).",
        minimum=0,
    ),
    _def(
        "internal_api_server_enabled",
        bool,
        False,
        False,
        "Start the admin API in each vLLM worker.",
    ),
    _def("internal_api_server_host", str, "127.0.0.1", False, "Address the admin API listens on."),
    _def(
        "internal_api_server_port_start",
        int,
        6999,
        False,
        "Worker N serves the admin API on port_start + 1 + N (worker 0 -> 7000).",
        minimum=0,
        maximum=65535,
    ),
    _def(
        "internal_api_server_api_key",
        str,
        None,
        False,
        "When set, every admin API request must carry 'Authorization: Bearer <key>'.",
        optional=True,
        secret=True,
    ),
    _def(
        "internal_api_server_allowed_hosts",
        list,
        [],
        False,
        "Extra Host names the admin API answers to (besides loopback names and the bind "
        "address), 'name' or 'name:port'; '*.example.com' for subdomains, '*' turns the "
        "DNS-rebinding check off. Comma-separated in the environment.",
    ),
    _def(
        "extra_config",
        dict,
        None,
        False,
        "Free-form extras (JSON object in the environment).",
        optional=True,
    ),
    _def(
        "writer_queue_size",
        int,
        256,
        False,
        "Disk/remote writes queued at most; a write finding the queue full is dropped and "
        "counted (the request never blocks).",
        minimum=1,
        maximum=MAX_QUEUE_ITEMS,
    ),
    _def(
        "local_disk_fsync",
        bool,
        False,
        False,
        "fsync each disk-tier file before its rename (survives power loss; slower).",
    ),
    _def(
        "remote_retry_interval_secs",
        float,
        1.0,
        False,
        "After a remote failure, seconds the remote tier (on a cluster: the failed node) "
        "answers misses without contacting the store.",
        minimum=0.0,
        maximum=MAX_TIMEOUT_SECS,
    ),
    _def(
        "chunk_statistics_auto_exit_check_secs",
        float,
        10.0,
        False,
        "Seconds between the chunk statistics' auto-exit checks.",
        minimum=0.01,
        maximum=MAX_TIMEOUT_SECS,
    ),
    _def(
        "chunk_statistics_expected_items",
        int,
        10_000_000,
        False,
        "Unique chunks the chunk statistics' Bloom filter is sized for (about 1.8 bytes each).",
        minimum=1,
        maximum=MAX_BLOOM_ITEMS,
    ),
    _def(
        "lookup_lease_secs",
        float,
        30.0,
        False,
        "Seconds the vLLM connector holds the CPU-tier chunks a lookup reported, unless the "
        "request loads or finishes first.",
        minimum=0.0,
        maximum=MAX_TIMEOUT_SECS,
    ),
    _def(
        "lookup_cache_secs",
        float,
        2.0,
        False,
        "Seconds the vLLM scheduler reuses a waiting request's lookup answer (0 = off).",
        minimum=0.0,
        maximum=MAX_TIMEOUT_SECS,
    ),
    _def(
        "enable_async_loading",
        bool,
        False,
        False,
        "vLLM connector: load a hit with chunks below the CPU tier in the background (vLLM "
        "holds the request until it is loaded).",
    ),
    _def(
        "enable_async_saving",
        bool,
        False,
        False,
        "vLLM connector: store a step's KV in the background (a finished request's blocks are "
        "freed once its stores are done).",
    ),
]

#: The one table of configuration keys, in a stable order.
CONFIG_DEFINITIONS: dict[str, ConfigDef] = {d.name: d for d in _DEFS}


#: Typed keys that ``extra_config`` may still carry (older configurations set them there).
EXTRA_CONFIG_KEYS: tuple[str, ...] = (
    "writer_queue_size",
    "local_disk_fsync",
    "remote_retry_interval_secs",
    "chunk_statistics_auto_exit_check_secs",
    "chunk_statistics_expected_items",
    "lookup_lease_secs",
    "lookup_cache_secs",
)
