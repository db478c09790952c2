"""Checks of the configuration: which file and environment, and every problem in them.

``LMCacheEngineConfig.load`` stops at the first bad value; here every key of the file and every
``LMCACHE_*`` variable is validated on its own (by the same code, one key at a time), so one run
lists every problem. The configuration the tier checks use is built from the values that passed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lmcache_native.config import (
    CONFIG_DEFINITIONS,
    CONFIG_FILE_ENV,
    ENV_PREFIX,
    SECRET_MASK,
    LMCacheEngineConfig,
    # NOTE: the loader's own reader, so a file is refused for exactly the reasons load() refuses it.
    _read_config_file,
)
from lmcache_native.doctor import FAIL, OK, WARN, Check
from lmcache_native.errors import ConfigError
from lmcache_native.storage.remote_url import parse_remote_url


@dataclass
class LoadedConfig:
    """The outcome of :func:`load`.

    Attributes:
        config: defaults plus every valid value (file, then environment).
        checks: the config lines of the report.
        secrets: raw secret values found (the API key, the password in ``remote_url``), to be
            scrubbed from every output.
    """

    config: LMCacheEngineConfig
    checks: list[Check] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


def _masked_leaves(raw: Any, shown: Any) -> list[str]:
    """Raw string values that the configuration shows as ``***`` (nested dicts walked)."""
    if isinstance(raw, dict) and isinstance(shown, dict):
        return [p for k, v in raw.items() for p in _masked_leaves(v, shown.get(k))]
    if isinstance(raw, str) and raw and shown == SECRET_MASK and raw != SECRET_MASK:
        return [raw]
    return []


def _url_password(url: str, extra: Any) -> str | None:
    try:
        spec = parse_remote_url(url, extra if isinstance(extra, dict) else None)
    except ValueError:
        spec = None
    if spec is not None and spec.password:
        return spec.password
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _secrets_of(values: Mapping[str, Any]) -> list[str]:
    """Raw secret values in ``values`` (valid or not): what the configuration masks."""
    out: list[str] = []
    for name, value in values.items():
        defn = CONFIG_DEFINITIONS.get(name)
        if defn is None or value is None:
            continue
        if defn.secret and isinstance(value, str):
            out.append(value)
        elif name == "remote_url" and isinstance(value, str):
            password = _url_password(value, values.get("extra_config"))
            if password:
                out.append(password)
        elif name == "extra_config":
            try:
                cfg = LMCacheEngineConfig.from_mapping({name: value}, source="doctor")
            except ConfigError:
                continue
            out.extend(_masked_leaves(cfg.get(name), cfg.to_dict()[name]))
    return out


def _suggest(name: str, known: list[str], prefix: str = "") -> str:
    bare = {k[len(prefix) :].lower(): k for k in known}
    close = difflib.get_close_matches(name[len(prefix) :].lower(), list(bare), n=1)
    return f" (did you mean {bare[close[0]]}?)" if close else ""


def _validate(values: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Splits ``values`` (known keys) into the valid ones and one error message per bad key."""
    good: dict[str, Any] = {}
    errors: list[str] = []
    for name, value in values.items():
        try:
            LMCacheEngineConfig.from_mapping({name: value}, source=source)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        good[name] = value
    return good, errors


def _file_path(config_path: str | None) -> tuple[str | None, str]:
    if config_path is not None:
        return config_path, "--config"
    env = os.environ.get(CONFIG_FILE_ENV) or None
    return env, CONFIG_FILE_ENV


def load(config_path: str | None = None) -> LoadedConfig:
    """Reads the file and the environment, validating every key; never raises on bad input.

    Args:
        config_path: ``--config``; ``None`` uses ``LMCACHE_CONFIG_FILE`` when set.

    Returns:
        The effective configuration (valid values only) and the config checks.
    """
    checks: list[Check] = []
    raw: dict[str, Any] = {}
    path, origin = _file_path(config_path)
    file_values: dict[str, Any] = {}
    if path is None:
        checks.append(Check("config.file", OK, f"none ({CONFIG_FILE_ENV} unset): defaults"))
    else:
        try:
            data = _read_config_file(path)
        except ConfigError as exc:
            checks.append(
                Check(
                    "config.file",
                    FAIL,
                    f"{exc} (from {origin})",
                    f"point {origin} at a readable YAML file of key: value lines",
                )
            )
        else:
            checks.append(Check("config.file", OK, f"{path} (from {origin}), {len(data)} keys"))
            known = sorted(CONFIG_DEFINITIONS)
            unknown = sorted(str(k) for k in data if k not in CONFIG_DEFINITIONS)
            for name in unknown:
                checks.append(
                    Check(
                        "config.unknown_key",
                        WARN,
                        f"{name!r} in {path} is not a lmcache-native key and is ignored"
                        + _suggest(name, known),
                        "correct or remove it",
                    )
                )
            file_values = {k: v for k, v in data.items() if k in CONFIG_DEFINITIONS}
            raw.update(file_values)

    env_values: dict[str, Any] = {}
    env_names = sorted(k for k in os.environ if k.startswith(ENV_PREFIX))
    known_env = {d.env_var: d.name for d in CONFIG_DEFINITIONS.values()}
    for var in env_names:
        if var == CONFIG_FILE_ENV:
            continue
        if var not in known_env:
            checks.append(
                Check(
                    "config.unknown_env",
                    WARN,
                    f"{var} is set but lmcache-native does not read it"
                    + _suggest(var, sorted(known_env), ENV_PREFIX),
                    "correct or unset it",
                )
            )
            continue
        env_values[known_env[var]] = os.environ[var]
    raw.update(env_values)
    secrets = _secrets_of(raw)

    good, errors = _validate(file_values, f"file {path}")
    for name, value in env_values.items():
        env_good, env_errors = _validate(
            {name: value}, f"environment {CONFIG_DEFINITIONS[name].env_var}"
        )
        good.update(env_good)
        errors.extend(env_errors)
    for message in errors:
        checks.append(
            Check(
                "config.value",
                FAIL,
                message,
                "correct the value (the checks below use the file's or the default value)",
            )
        )
    config = LMCacheEngineConfig.from_mapping(good, source="doctor")
    config.source_file = path
    set_vars = ", ".join(CONFIG_DEFINITIONS[n].env_var for n in env_values) or "none"
    defaults = LMCacheEngineConfig().to_dict()
    shown = {k: v for k, v in config.to_dict().items() if v != defaults.get(k)}
    values = ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "all defaults"
    checks.append(Check("config.effective", OK, f"environment: {set_vars}; {values}"))
    return LoadedConfig(config=config, checks=checks, secrets=secrets)
