"""Masking of secrets in what the admin API shows: names that look secret, passwords in URLs.

Used by ``/env`` (environment variables) and ``/meta`` (``kv_connector_extra_config``).
"""

from __future__ import annotations

import re
from typing import Any

from lmcache_native.config import SECRET_MASK

_SECRET_WORDS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASS",
    "PWD",
    "CREDENTIAL",
    "CREDS",
    "AUTH",
    "COOKIE",
    "SESSION",
    "SIGNATURE",
    "PRIVATE",
    "CERT",
    "SALT",
    "DSN",
)
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# scheme://user:password@host or scheme://token@host, anywhere in a value (several URLs too).
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]*)@")


def is_secret_name(name: str) -> bool:
    """Whether a variable or key name looks like it holds a secret.

    A name is secret when one of its words (split at ``_``, ``-``, ``.`` and camelCase) is or
    starts or ends with a secret word (``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD``, ``PASS``,
    ``CREDENTIAL``, ``AUTH``, ...): ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``apiKey``,
    ``REDIS_PASSWD``, ``LMCACHE_AUTHORIZATION``.
    """
    words = [w.upper() for w in _WORD_SPLIT.split(name) if w]
    joined = "".join(words)
    for word in words:
        for secret in _SECRET_WORDS:
            if word == secret or word.startswith(secret) or word.endswith(secret):
                return True
    # "APIKEY", "ACCESSTOKEN" written as one word
    return any(s in joined for s in ("APIKEY", "ACCESSKEY", "TOKEN", "SECRET", "PASSWORD"))


def mask_urls(value: str) -> str:
    """Masks the credentials of every URL in ``value``.

    Those of ``scheme://user:pw@host`` become ``user:***`` (``***`` when there is no user name).
    """

    def repl(m: re.Match[str]) -> str:
        user, colon, _ = m.group("userinfo").partition(":")
        shown = f"{user}:{SECRET_MASK}" if colon else SECRET_MASK
        return f"{m.group('scheme')}{shown}@"

    return _URL_USERINFO.sub(repl, value)


def redact_value(name: str, value: Any) -> Any:
    """``value`` as shown under ``name``.

    Masked entirely when the name looks secret, with URL credentials masked otherwise; dicts
    and lists are redacted item by item.
    """
    if is_secret_name(name):
        return SECRET_MASK if value not in (None, "") else value
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(name, v) for v in value]
    return value
