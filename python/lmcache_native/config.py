"""Engine configuration: one typed table, LMCache's key names, file < environment < overrides.

Every key is defined once in :data:`~lmcache_native.config_keys.CONFIG_DEFINITIONS` (name, type,
default, environment variable ``LMCACHE_<NAME>``, runtime mutability, description). An LMCache
YAML file and ``LMCACHE_*`` environment work unchanged for the keys listed there; keys this
engine does not know are reported in one warning, never a crash.

Load order (later wins): defaults < YAML/JSON file (argument or ``LMCACHE_CONFIG_FILE``) <
environment < explicit overrides. Bad values raise :class:`~lmcache_native.errors.ConfigError`
naming the key and the value. :meth:`LMCacheEngineConfig.update` is the runtime path used by
``POST /conf``: it validates the type, refuses immutable keys and calls the listeners registered
with :meth:`LMCacheEngineConfig.on_change`, so the component that uses a value sees the change.
Components never copy mutable values; they call :meth:`LMCacheEngineConfig.get` when they need one.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from lmcache_native.config_keys import (
    CACHE_POLICIES,
    CONFIG_DEFINITIONS,
    CONFIG_FILE_ENV,
    ENV_PREFIX,
    EXTRA_CONFIG_KEYS,
    HASH_ALGORITHMS,
    MAX_CONFIG_FILE_BYTES,
    MAX_SIZE_GB,
    MAX_TIMEOUT_SECS,
    REMOTE_SCHEMES,
    REMOTE_SERDES,
    SECRET_MASK,
    ConfigDef,
)
from lmcache_native.config_values import (
    TypeMismatch,
    check_value,
    coerce,
    mask_url_credentials,
    parse_value,
    public_value,
)
from lmcache_native.errors import ConfigError

__all__ = [
    "CACHE_POLICIES",
    "CONFIG_DEFINITIONS",
    "CONFIG_FILE_ENV",
    "ENV_PREFIX",
    "EXTRA_CONFIG_KEYS",
    "GB",
    "HASH_ALGORITHMS",
    "MAX_CONFIG_FILE_BYTES",
    "MAX_SIZE_GB",
    "MAX_TIMEOUT_SECS",
    "REMOTE_SCHEMES",
    "REMOTE_SERDES",
    "SECRET_MASK",
    "ConfigDef",
    "LMCacheEngineConfig",
    "mask_url_credentials",
    "read_config_file",
    "size_bytes",
]

logger = logging.getLogger(__name__)

GB = 1024**3


def read_config_file(path: str | os.PathLike[str], *, show_path: bool = True) -> dict[str, Any]:
    """Reads a configuration file: a small, regular, UTF-8 YAML (or JSON) mapping.

    The one reader of configuration files (the loader, the doctor and the ``fs://`` import use
    it). The file is opened without following it into a FIFO or device (non-blocking open, then
    ``fstat`` of what was opened); its contents never appear in errors.

    Args:
        path: the file.
        show_path: whether error messages end with the path.

    Returns:
        The mapping (empty for an empty file).

    Raises:
        ConfigError: the file is missing, not a regular file, too large, not UTF-8, not YAML, or
            not a mapping.
    """

    def refuse(reason: str) -> ConfigError:
        return ConfigError(f"Configuration file {reason}" + (f": {path}" if show_path else ""))

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise refuse("not found") from None
    except (OSError, ValueError) as exc:
        if getattr(exc, "errno", None) == errno.ELOOP:
            raise refuse("path has a symlink loop") from None
        why = getattr(exc, "strerror", None) or "invalid path"
        raise refuse(f"cannot be accessed ({why})") from None
    if stat.S_ISDIR(st.st_mode):
        raise refuse("is a directory, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise refuse("is not a regular file")
    if st.st_size > MAX_CONFIG_FILE_BYTES:
        raise refuse(f"is too large ({st.st_size} bytes; limit {MAX_CONFIG_FILE_BYTES})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise refuse(f"cannot be opened ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between stat and open
            raise refuse("is not a regular file")
        raw = os.read(fd, MAX_CONFIG_FILE_BYTES + 1)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise refuse(f"is too large (limit {MAX_CONFIG_FILE_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 text (not YAML)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise refuse(
            "is not valid YAML" + (f" (line {mark.line + 1})" if mark is not None else "")
        ) from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise refuse("is nested too deeply (not YAML)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise refuse("must hold a YAML mapping of keys to values")
    return data


# NOTE: the doctor imports the reader under its former name.
_read_config_file = read_config_file


def size_bytes(size_gb: Any) -> int:
    """A size key's value (GB, as a number) in bytes."""
    return int(float(size_gb) * GB)


def _apply_extra_keys(parsed: dict[str, Any], source: str) -> None:
    """Moves typed keys still given in ``parsed``'s ``extra_config`` to their keys (validated).

    A key set at the top level of the same source wins over its ``extra_config`` entry.
    """
    extra = parsed.get("extra_config") or {}
    for name in EXTRA_CONFIG_KEYS:
        if name in extra and name not in parsed:
            parsed[name] = parse_value(
                CONFIG_DEFINITIONS[name], extra[name], f"{source} extra_config"
            )


Listener = Callable[[str, Any], None]


class LMCacheEngineConfig:
    """The engine's configuration values, typed and validated, with change listeners.

    Read values with :meth:`get`. Thread-safe.
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
        cfg._apply(read_config_file(path), f"file {path}", warn_unknown=True)
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
            cfg._apply(read_config_file(file_path), f"file {file_path}", warn_unknown=True)
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
            k: parse_value(CONFIG_DEFINITIONS[k], v, source)
            for k, v in values.items()
            if k in CONFIG_DEFINITIONS
        }
        _apply_extra_keys(parsed, source)
        with self._lock:
            self._values.update(parsed)

    def _apply_env(self) -> None:
        parsed = {}
        for name, defn in CONFIG_DEFINITIONS.items():
            raw = os.environ.get(defn.env_var)
            if raw is not None:
                parsed[name] = parse_value(defn, raw, f"environment {defn.env_var}")
        _apply_extra_keys(parsed, "environment")
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

    def extra(self, name: str, default: Any = None) -> Any:
        """``extra_config[name]``, or ``default`` when unset.

        For a name of :data:`~lmcache_native.config_keys.EXTRA_CONFIG_KEYS`, the typed key's
        value (which an ``extra_config`` entry of that name sets); read those with :meth:`get`.
        """
        if name in EXTRA_CONFIG_KEYS:
            return self.get(name)
        extra = self.get("extra_config") or {}
        return extra.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """Every key and value, JSON-able, with secrets masked as ``"***"``.

        Masked: secret keys, the password in ``remote_url``, secret-looking ``extra_config``
        entries.
        """
        with self._lock:
            out = copy.deepcopy(self._values)
        return {name: public_value(CONFIG_DEFINITIONS[name], v) for name, v in out.items()}

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
                    value = check_value(defn, coerce(defn, raw, lenient=False))
                except TypeMismatch:
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
                except Exception as exc:  # reported per key, value rolled back
                    with self._lock:
                        self._values[name] = old
                    logger.warning("Config update of %s failed to apply: %s", name, exc)
                    errors[name] = f"Failed to apply {name}: {exc}"
                    continue
                updated[name] = value
        return updated, errors

    def __repr__(self) -> str:
        """The values as :meth:`to_dict` shows them."""
        return f"LMCacheEngineConfig({self.to_dict()!r})"
