"""Engine configuration: one typed table, LMCache's key names, file < environment < overrides.

Every key is defined once in :data:`CONFIG_DEFINITIONS` (name, type, default, environment
variable ``LMCACHE_<NAME>``, runtime mutability, description). An LMCache YAML file and
``LMCACHE_*`` environment work unchanged for the keys listed here; keys this engine does not
know are reported in one warning, never a crash.

Load order (later wins): defaults < YAML/JSON file (argument or ``LMCACHE_CONFIG_FILE``) <
environment < explicit overrides. Bad values raise :class:`~lmcache_native.errors.ConfigError`
naming the key and the value. :meth:`LMCacheEngineConfig.update` is the runtime path used by
``POST /conf``: it validates the type, refuses immutable keys and calls the listeners registered
with :meth:`LMCacheEngineConfig.on_change`, so the component that uses a value sees the change.
Components never copy mutable values; they call :meth:`LMCacheEngineConfig.get` when they need one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmcache_native.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FILE_ENV = "LMCACHE_CONFIG_FILE"
ENV_PREFIX = "LMCACHE_"
SECRET_MASK = "***"
# NOTE: a config file is read whole; anything larger is not a config file.
MAX_CONFIG_FILE_BYTES = 1 << 20
# NOTE: bounds that keep derived values representable: GB sizes become byte counts
# (int(size * 2**30)), and blocking_timeout_secs becomes a socket timeout (time_t/timeval).
MAX_SIZE_GB = 1_000_000
MAX_TIMEOUT_SECS = 86400

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
]

#: The one table of configuration keys, in a stable order.
CONFIG_DEFINITIONS: dict[str, ConfigDef] = {d.name: d for d in _DEFS}

# An allowed-hosts entry: '*', a name or IPv4 address ('*.' prefix allowed) or a bracketed IPv6
# address, each with an optional ':port'.
_HOST_PATTERN = re.compile(
    r"\*|(?:(?:\*\.)?[A-Za-z0-9_-][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})


class _TypeMismatch(Exception):
    """Internal: the value has the wrong type for its key."""


def _coerce(defn: ConfigDef, value: Any, lenient: bool) -> Any:
    """Converts ``value`` to the key's type.

    Args:
        defn: the key.
        value: the raw value.
        lenient: accept text spellings (environment and files); strict for runtime updates.

    Raises:
        _TypeMismatch: wrong type.
        ValueError: right type, unparsable text.
    """
    if value is None or (lenient and isinstance(value, str) and value == "" and defn.optional):
        if defn.optional:
            return None
        raise _TypeMismatch
    t = defn.type
    if t is bool:
        if isinstance(value, bool):
            return value
        if lenient and isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("not a boolean")
        if lenient and isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _TypeMismatch
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if lenient and isinstance(value, str):
            return int(value.strip())
        if lenient and isinstance(value, float) and value.is_integer():
            return int(value)
        raise _TypeMismatch
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if lenient and isinstance(value, str):
            return float(value.strip())
        raise _TypeMismatch
    if t is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch
    if t is dict:
        if isinstance(value, dict):
            return copy.deepcopy(value)
        if lenient and isinstance(value, str):
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            return parsed
        raise _TypeMismatch
    if t is list:
        if lenient and isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
            if isinstance(value, list):
                value = [v.strip() if isinstance(v, str) else v for v in value]
                value = [v for v in value if v != ""]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise _TypeMismatch
    raise AssertionError(f"unsupported config type {t}")  # pragma: no cover - table is static


def _check(defn: ConfigDef, value: Any) -> Any:
    """Normalises and range-checks a well-typed value; raises ValueError with the reason."""
    if value is None:
        return None
    if defn.normalize is not None:
        value = defn.normalize(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if defn.choices is not None and value not in defn.choices:
        raise ValueError(f"must be one of {list(defn.choices)}")
    if defn.minimum is not None and value < defn.minimum:
        raise ValueError(f"must be >= {defn.minimum:g}")
    if defn.maximum is not None and value > defn.maximum:
        raise ValueError(f"must be <= {defn.maximum:g}")
    if defn.name == "remote_url" and not value.startswith(REMOTE_SCHEMES):
        raise ValueError(f"must start with one of {list(REMOTE_SCHEMES)}")
    if defn.name == "remote_url":
        # NOTE: imported here; the URL parser is the storage layer's (one parser for all).
        from lmcache_native.storage.remote_url import validate_remote_url

        validate_remote_url(value)  # its messages never hold the password
    if defn.name == "internal_api_server_allowed_hosts":
        bad = [h for h in value if not _HOST_PATTERN.fullmatch(h)]
        if bad:
            raise ValueError(f"not host names ('name', 'name:port', '*.domain' or '*'): {bad!r}")
    if defn.name == "extra_config":
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError("must be JSON-serialisable") from exc
    return value


def mask_url_credentials(url: str) -> str:
    """``redis://user:pw@host/0`` -> ``redis://user:***@host/0`` (``***`` for a bare token).

    Every scheme but ``fs://`` takes the credentials up to the last ``@``, so host lists
    (``redis-cluster://u:pw@h1:1,h2:2``) and passwords holding ``/``, ``?`` or ``@`` are masked
    whole; ``password=``/``token=``-like query parameters are masked too. URLs without
    credentials are returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme != "fs":
        userinfo, at, host = rest.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            user = user.split("/", 1)[0].split("?", 1)[0]
            rest = f"{user}:{SECRET_MASK}@{host}" if colon else f"{SECRET_MASK}@{host}"
        return f"{scheme}://" + _URL_SECRET_PARAM.sub(rf"\g<1>{SECRET_MASK}", rest)
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    netloc, tail = (rest, "") if end < 0 else (rest[:end], rest[end:])
    if "@" not in netloc:
        return url
    userinfo, host = netloc.rsplit("@", 1)
    user, colon, _password = userinfo.partition(":")
    masked = f"{user}:{SECRET_MASK}" if colon else SECRET_MASK
    return f"{scheme}://{masked}@{host}{tail}"


# A query parameter of a URL that holds a secret (redis-py reads ?password=...).
_URL_SECRET_PARAM = re.compile(
    r"([?&](?:password|passwd|pass|pwd|token|secret|auth)=)[^&#]*", re.IGNORECASE
)
# An extra_config key whose value is a secret (valkey_password, redis_password, ...).
_SECRET_EXTRA_KEY = re.compile(
    r"password|passwd|pwd|(?:^|[_.-])pass(?:$|[_.-])|secret|token|credential|api_?key",
    re.IGNORECASE,
)


def _mask_extra_config(value: Any) -> Any:
    """``extra_config`` as shown: values of secret-looking keys masked, nested dicts too."""
    if isinstance(value, dict):
        return {
            k: (
                SECRET_MASK
                if isinstance(k, str) and _SECRET_EXTRA_KEY.search(k) and v not in (None, "")
                else _mask_extra_config(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, str) and "://" in value:
        return mask_url_credentials(value)
    return value


def _public(defn: ConfigDef, value: Any) -> Any:
    """The value as shown outside the process: secrets masked, URL credentials masked."""
    if value is None:
        return None
    if defn.secret:
        return SECRET_MASK
    if defn.name == "remote_url" and isinstance(value, str):
        return mask_url_credentials(value)
    if defn.name == "extra_config":
        return _mask_extra_config(value)
    return value


def _show(defn: ConfigDef, value: Any) -> str:
    shown = _public(defn, value)
    return SECRET_MASK if shown == SECRET_MASK else repr(shown)


def _parse_load_value(defn: ConfigDef, value: Any, source: str) -> Any:
    try:
        return _check(defn, _coerce(defn, value, lenient=True))
    except _TypeMismatch:
        raise ConfigError(
            f"Invalid value for config key '{defn.name}' from {source}: {_show(defn, value)} "
            f"(expected {defn.type_name})",
            key=defn.name,
        ) from None
    except RecursionError:
        raise ConfigError(
            f"Invalid value for config key '{defn.name}' from {source}: nested too deeply",
            key=defn.name,
        ) from None
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"Invalid value for config key '{defn.name}' from {source}: {_show(defn, value)} "
            f"({exc})",
            key=defn.name,
        ) from None


def _read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a YAML (or JSON, a YAML subset) mapping; never echoes its contents in errors."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"Configuration file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {p}: {exc.strerror}") from None
    if not p.is_file():
        raise ConfigError(f"Configuration file is not a regular file: {p}")
    if st.st_size > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            f"Configuration file is too large: {p} ({st.st_size} bytes > {MAX_CONFIG_FILE_BYTES})"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"Configuration file is not readable UTF-8 text: {p}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"Configuration file is not valid YAML{where}: {p}") from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise ConfigError(f"Configuration file is nested too deeply (not YAML): {p}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Configuration file must hold a mapping of keys to values: {p}")
    return data


Listener = Callable[[str, Any], None]


class LMCacheEngineConfig:
    """The engine's configuration values, typed and validated, with change listeners.

    Read values with :meth:`get` (or attribute access, ``config.chunk_size``). Thread-safe.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        """Creates a config from defaults plus already-validated ``values``.

        Prefer the ``from_*``/``load`` constructors, which validate their input.
        """
        self._lock = threading.RLock()
        self._update_lock = threading.Lock()
        self._values: dict[str, Any] = {
            n: copy.deepcopy(d.default) for n, d in CONFIG_DEFINITIONS.items()
        }
        self._listeners: list[Listener] = []
        self.source_file: str | None = None
        if values:
            self._apply(values, "overrides", warn_unknown=False)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_defaults(cls, **overrides: Any) -> LMCacheEngineConfig:
        """Defaults, then ``overrides`` (validated; unknown keys raise ConfigError)."""
        cfg = cls()
        cfg._apply(overrides, "overrides", warn_unknown=False)
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LMCacheEngineConfig:
        """Defaults, then the YAML/JSON file at ``path`` (unknown keys warn)."""
        cfg = cls()
        cfg._apply(_read_config_file(path), f"file {path}", warn_unknown=True)
        cfg.source_file = str(path)
        return cfg

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], source: str = "mapping"
    ) -> LMCacheEngineConfig:
        """Defaults, then ``values`` as if read from a file (lenient types; unknown keys warn)."""
        cfg = cls()
        cfg._apply(values, source, warn_unknown=True)
        return cfg

    @classmethod
    def from_env(cls) -> LMCacheEngineConfig:
        """Defaults, then the ``LMCACHE_<NAME>`` environment variables."""
        cfg = cls()
        cfg._apply_env()
        return cfg

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> LMCacheEngineConfig:
        """Defaults < file (``path`` or ``LMCACHE_CONFIG_FILE``) < environment < ``overrides``."""
        cfg = cls()
        file_path = path if path is not None else os.environ.get(CONFIG_FILE_ENV) or None
        if file_path is not None:
            cfg._apply(_read_config_file(file_path), f"file {file_path}", warn_unknown=True)
            cfg.source_file = str(file_path)
        cfg._apply_env()
        if overrides:
            cfg._apply(overrides, "overrides", warn_unknown=False)
        return cfg

    def _apply(self, values: Mapping[str, Any], source: str, warn_unknown: bool) -> None:
        unknown = sorted(str(k) for k in values if k not in CONFIG_DEFINITIONS)
        if unknown:
            if not warn_unknown:
                raise ConfigError(f"Unknown config key(s) in {source}: {unknown}")
            logger.warning("Ignoring unknown config key(s) in %s: %s", source, ", ".join(unknown))
        parsed = {
            k: _parse_load_value(CONFIG_DEFINITIONS[k], v, source)
            for k, v in values.items()
            if k in CONFIG_DEFINITIONS
        }
        with self._lock:
            self._values.update(parsed)

    def _apply_env(self) -> None:
        parsed = {}
        for name, defn in CONFIG_DEFINITIONS.items():
            raw = os.environ.get(defn.env_var)
            if raw is not None:
                parsed[name] = _parse_load_value(defn, raw, f"environment {defn.env_var}")
        with self._lock:
            self._values.update(parsed)

    # -- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        """The current value of ``name``.

        Raises:
            KeyError: ``name`` is not a config key.
        """
        if name not in CONFIG_DEFINITIONS:
            raise KeyError(f"Unknown config key {name!r}")
        with self._lock:
            value = self._values[name]
        return copy.deepcopy(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in CONFIG_DEFINITIONS:
            raise AttributeError(name)
        return self.get(name)

    def extra(self, name: str, default: Any = None) -> Any:
        """``extra_config[name]``, or ``default`` when unset."""
        extra = self.get("extra_config") or {}
        return extra.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """Every key and value, JSON-able, secrets (and passwords in ``remote_url``) masked as
        ``"***"``."""
        with self._lock:
            out = copy.deepcopy(self._values)
        return {name: _public(CONFIG_DEFINITIONS[name], v) for name, v in out.items()}

    # -- runtime updates -----------------------------------------------------------------------

    def on_change(self, callback: Listener) -> None:
        """Registers ``callback(name, value)``, called after each successful runtime update."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Unregisters a listener added with :meth:`on_change` (no error if absent)."""
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def update(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Updates several keys at runtime, each on its own.

        A key is refused when unknown (``"Unknown config"``), immutable (``"Config is not
        mutable at runtime"``), of the wrong type (a message naming the expected type) or out
        of range. Each accepted key is set, then every listener is called with it; a listener
        that raises rolls the key back and the error is reported for that key.

        Args:
            values: key -> new value, as decoded from JSON (no text-to-type conversion).

        Returns:
            ``(updated, errors)``: the keys set with their new values, and the refused keys with
            the reason.
        """
        updated: dict[str, Any] = {}
        errors: dict[str, str] = {}
        with self._update_lock:
            for name, raw in values.items():
                defn = CONFIG_DEFINITIONS.get(name)
                if defn is None:
                    errors[name] = "Unknown config"
                    continue
                if not defn.mutable:
                    errors[name] = "Config is not mutable at runtime"
                    continue
                try:
                    value = _check(defn, _coerce(defn, raw, lenient=False))
                except _TypeMismatch:
                    errors[name] = (
                        f"Invalid type for {name}: expected {defn.type_name}, "
                        f"got {type(raw).__name__}"
                    )
                    continue
                except ValueError as exc:
                    errors[name] = f"Invalid value for {name}: {exc}"
                    continue
                with self._lock:
                    old = self._values[name]
                    self._values[name] = value
                    listeners = list(self._listeners)
                try:
                    for cb in listeners:
                        cb(name, value)
                except Exception as exc:  # noqa: BLE001 - reported per key, value rolled back
                    with self._lock:
                        self._values[name] = old
                    logger.warning("Config update of %s failed to apply: %s", name, exc)
                    errors[name] = f"Failed to apply {name}: {exc}"
                    continue
                updated[name] = value
        return updated, errors

    def __repr__(self) -> str:
        return f"LMCacheEngineConfig({self.to_dict()!r})"
