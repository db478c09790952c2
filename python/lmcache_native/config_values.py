"""Configuration values: text-to-type conversion, range checks, and masking of secrets.

:func:`parse_value` turns a value from a file, the environment or an override into the key's
type (lenient about text spellings) and checks it; runtime updates use :func:`coerce` (strict)
and :func:`check_value`. :func:`public_value` is a value as shown outside the process: secrets,
passwords in URLs and secret-looking ``extra_config`` entries masked.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from lmcache_native.config_keys import REMOTE_SCHEMES, SECRET_MASK, ConfigDef
from lmcache_native.errors import ConfigError

# An allowed-hosts entry: '*', a name or IPv4 address ('*.' prefix allowed) or a bracketed IPv6
# address, each with an optional ':port'.
_HOST_PATTERN = re.compile(
    r"\*|(?:(?:\*\.)?[A-Za-z0-9_-][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})


class TypeMismatch(Exception):
    """The value has the wrong type for its key."""


def coerce(defn: ConfigDef, value: Any, lenient: bool) -> Any:
    """Converts ``value`` to the key's type.

    Args:
        defn: the key.
        value: the raw value.
        lenient: accept text spellings (environment and files); strict for runtime updates.

    Raises:
        TypeMismatch: wrong type.
        ValueError: right type, unparsable text.
    """
    if value is None or (lenient and isinstance(value, str) and value == "" and defn.optional):
        if defn.optional:
            return None
        raise TypeMismatch
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
        raise TypeMismatch
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if lenient and isinstance(value, str):
            return int(value.strip())
        if lenient and isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeMismatch
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if lenient and isinstance(value, str):
            return float(value.strip())
        raise TypeMismatch
    if t is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch
    if t is dict:
        if isinstance(value, dict):
            return copy.deepcopy(value)
        if lenient and isinstance(value, str):
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            return parsed
        raise TypeMismatch
    if t is list:
        if lenient and isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
            if isinstance(value, list):
                value = [v.strip() if isinstance(v, str) else v for v in value]
                value = [v for v in value if v != ""]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeMismatch
    raise AssertionError(f"unsupported config type {t}")  # pragma: no cover - table is static


def check_value(defn: ConfigDef, value: Any) -> Any:
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


def public_value(defn: ConfigDef, value: Any) -> Any:
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
    shown = public_value(defn, value)
    return SECRET_MASK if shown == SECRET_MASK else repr(shown)


def parse_value(defn: ConfigDef, value: Any, source: str) -> Any:
    """``value`` from ``source`` (a file, the environment, overrides) as the key's type, checked.

    Raises:
        ConfigError: wrong type or out of range; the message names the key and the source and
            shows the value masked as :func:`public_value` does.
    """
    try:
        return check_value(defn, coerce(defn, value, lenient=True))
    except TypeMismatch:
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
