"""Typed domain errors of lmcache-native.

A cache miss is a value, never one of these. The admin API maps each class to an HTTP status in
one module (``api/``); the engine and storage raise only these (or ``ValueError``/``TypeError``
for programming errors such as a wrong tensor dtype).
"""

from __future__ import annotations

from collections.abc import Sequence


class LMCacheError(Exception):
    """Base class of every domain error raised by lmcache-native."""


class ConfigError(LMCacheError):
    """A configuration value (from a file, the environment or an override) is invalid.

    The message names the key and the offending value.

    Attributes:
        key: the offending key, when one key is to blame.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UnknownBackendError(LMCacheError):
    """A storage backend name that this engine does not have.

    Attributes:
        name: the requested backend name.
        available: the names this engine has, in tier order.
    """

    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = name
        self.available = list(available)
        super().__init__(f"Backend '{name}' not found. Available: {self.available}")


class NoKVCacheError(LMCacheError):
    """The operation needs registered KV caches and none are registered."""

    def __init__(self, message: str = "No KV cache is registered with the engine") -> None:
        super().__init__(message)


class InvalidSlotsError(LMCacheError):
    """A slot index lies outside the registered KV cache (or the slot mapping is malformed)."""


class StatisticsUnavailableError(LMCacheError):
    """Chunk statistics were requested while ``enable_chunk_statistics`` is off."""

    def __init__(self, message: str = "Client does not support statistics.") -> None:
        super().__init__(message)


class FSChunkLoadError(LMCacheError):
    """``load_fs_chunks`` refused its configuration file or its ``fs://`` store.

    The message says why (never the file's contents).
    """


class CorruptChunkError(LMCacheError):
    """A serialized chunk failed its header or payload check.

    Storage tiers turn this into a miss (and delete the entry); it never reaches callers of the
    engine.
    """
